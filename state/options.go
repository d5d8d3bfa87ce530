package state

import (
	"crypto/rand"
	"io"
	"log/slog"
	"time"
)

// Options are what every implementation takes besides its store. The zero
// value is ready to use.
type Options struct {
	// Logger receives one line per node that joins or leaves and per run
	// created (and, for a database, its failures). Default: slog.Default().
	Logger *slog.Logger
	// Now is the clock for liveness, expiry and the task times.
	// Default: time.Now.
	Now func() time.Time
	// Rand is the source of node ids, run ids and task ids (UUID4).
	// Default: crypto/rand.Reader.
	Rand io.Reader
	// Link bounds what peers can make the Flower 1.29.0 generation
	// (LinkState) hold. Default: see LinkLimits.
	Link LinkLimits
	// ObjectDir is where the in-memory state keeps the contents of Flower
	// 1.29 objects of 1 MiB or more that SuperNodes push (replies, read
	// once by the ServerApp, and what a node key lets a stranger make the
	// SuperLink hold) while they wait to be pulled: in 16 files that have
	// no name there (O_TMPFILE, or removed as created), written in turn,
	// so that nothing stays after a stop or a crash, their space reused;
	// their memory is the kernel's page cache, which it can write back and
	// reclaim, not the process's. What the ServerApp pushes stays in
	// memory: every node reads it. Empty keeps everything in memory.
	// States in a database ignore it: their objects are in the database.
	ObjectDir string
}

// WithDefaults returns o with its defaults filled in.
func (o Options) WithDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	o.Link = o.Link.WithDefaults()
	return o
}
