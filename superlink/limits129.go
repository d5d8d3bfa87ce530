package superlink

import (
	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// Flower 1.29.0 moves arrays in chunks of at most 5 MiB
// (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), each its own object, so no 1.29.0
// request needs the 512 MiB of 1.8.0's pushes.
const (
	// ObjectMessageSize is the largest PushObject request: a 5 MiB chunk
	// with its object head and the request's other fields, rounded up.
	ObjectMessageSize = 6 << 20
	// FabMessageSize is the largest StartRun request: a FAB of at most 10
	// MB (Flower's FAB_MAX_SIZE) with its config, rounded up.
	FabMessageSize = 11 << 20
	// TreeMessageSize bounds the requests that carry messages with their
	// object trees, a ServerApp's context or its log output.
	TreeMessageSize = 8 << 20
	// ReplyMessageSize bounds a SuperNode's PushMessages: one reply and
	// its tree of at most state.MaxTreeObjects ids (about 70 bytes each).
	ReplyMessageSize = 2 << 20
)

// methodLimits129 is the largest request of every Flower 1.29.0 method
// served (Fleet, ServerAppIo, Control), by Flower's path: SmallMessageSize
// but for the few that carry objects, trees, contexts, logs or a FAB. The
// frame guard reads it through methodLimit.
var methodLimits129 = func() map[string]int64 {
	m := map[string]int64{}
	for _, d := range []*grpc.ServiceDesc{&flwr129.Fleet_ServiceDesc, &flwr129.ServerAppIo_ServiceDesc, &flwr129.Control_ServiceDesc} {
		for _, md := range d.Methods {
			m[flwr129.FlowerPath("/"+d.ServiceName+"/"+md.MethodName)] = SmallMessageSize
		}
		for _, sd := range d.Streams {
			m[flwr129.FlowerPath("/"+d.ServiceName+"/"+sd.StreamName)] = SmallMessageSize
		}
	}
	for path, n := range map[string]int64{
		flwr129.Fleet_PushObject_FullMethodName:           ObjectMessageSize,
		flwr129.ServerAppIo_PushObject_FullMethodName:     ObjectMessageSize,
		flwr129.Fleet_PushMessages_FullMethodName:         ReplyMessageSize,
		flwr129.ServerAppIo_PushMessages_FullMethodName:   TreeMessageSize,
		flwr129.ServerAppIo_PushAppOutputs_FullMethodName: TreeMessageSize,
		flwr129.ServerAppIo_PushLogs_FullMethodName:       TreeMessageSize,
		flwr129.Control_StartRun_FullMethodName:           FabMessageSize,
	} {
		m[flwr129.FlowerPath(path)] = n
	}
	return m
}()

// methodLimit129 returns the largest request of a Flower 1.29.0 method;
// false for a path that is not one.
func methodLimit129(method string) (int64, bool) {
	n, ok := methodLimits129[method]
	return n, ok
}
