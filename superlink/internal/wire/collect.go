package wire

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// collectMin is the smallest allocation CollectFor considers.
const collectMin = 4 << 20

// returnMin is the live heap from which CollectFor gives freed pages back.
const returnMin = 64 << 20

var heapSamples = sync.Pool{New: func() any {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	return &s
}}

// CollectFor runs a garbage collection before n bytes are allocated for
// an array when the heap holds at least n bytes allocated since the last
// collection, which a collection now would likely free for the array to
// reuse. Received arrays come in tens of megabytes at a time, together
// with the frames they arrived in: collected only as the heap doubles
// (GOGC=100), arrays and frames no longer used stayed in memory next to
// new ones and raised the peak by half. A collection of a heap that is
// mostly arrays (which hold no pointers) costs a few milliseconds.
//
// The collection also gives the freed pages back to the system
// (debug.FreeOSMemory): with --database, the state's small allocations
// between arrays left the freed space of an array in pieces, the next
// array took fresh pages, and the old ones stayed resident until the
// runtime's slow scavenger came by. With the pages given back at once,
// the peak RSS of the 2-node FedAvg run on SQLite went from 195 to
// 163 MiB (16 nodes: 646 to 545-581 MiB), in memory unchanged (155 MiB),
// for a few percent more system time in page faults.
//
// Pages go back only while the live heap is large (returnMin or more):
// then held arrays break the free space into pieces. A small live heap
// (objects kept in files, a small run) gives the next array the pages the
// last one freed; given back, every array faulted its pages in again: the
// 16-node Flower 1.29 FedAvg run took 407,000 page faults and 9.5 CPU s,
// and takes 222,000 and 8.9 s collecting without giving pages back, for
// the same peak RSS.
//
// One collection at a time: arrays received together (16 nodes pushing at
// once) would each force one more, the later ones finding little to free.
func CollectFor(n int) {
	if n < collectMin || collecting.Load() {
		return
	}
	s := heapSamples.Get().(*[]metrics.Sample)
	metrics.Read(*s)
	objects, live := (*s)[0].Value.Uint64(), (*s)[1].Value.Uint64()
	heapSamples.Put(s)
	if objects > live && objects-live >= uint64(n) && collecting.CompareAndSwap(false, true) {
		if live >= returnMin {
			debug.FreeOSMemory()
		} else {
			runtime.GC()
		}
		collecting.Store(false)
	}
}

// collecting is true while CollectFor runs a collection.
var collecting atomic.Bool
