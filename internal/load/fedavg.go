package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/sepal-fl/sepal/app"
)

// FedAvgOptions describe the FedAvg workload.
type FedAvgOptions struct {
	// Nodes is the number of SuperNodes (default 2), each with its own
	// connection, as separate processes would have.
	Nodes int
	// Rounds is the number of FedAvg rounds (default 2).
	Rounds int
	// ModelBytes is the size of the model: one float32 array of
	// ModelBytes/4 values (default 32 MiB, 8,388,608 values).
	// Its .npy encoding adds a 128-byte header.
	ModelBytes int
	// NodePoll is the SuperNodes' wait between PullTaskIns calls when no
	// task came (default 3s, as Flower 1.8.0).
	NodePoll time.Duration
	// ServerPoll is the ServerApp's wait between PullTaskRes calls
	// (default 1s, as Flower 1.8.0).
	ServerPoll time.Duration
	// InStep starts every node at once, so that they poll in step and
	// their results arrive together: the worst case for the SuperLink's
	// memory. By default node i starts i*NodePoll/Nodes after the first,
	// as SuperNodes started one by one poll out of step.
	InStep bool
	// Logger receives the apps' logs (default: discard).
	Logger *slog.Logger
	// OtherCPU, if set, reads the CPU time of another process tree that
	// the run loads, such as the PostgreSQL server of --database
	// postgres:// (TreeCPU), at the start and at the end of each round,
	// as the SuperLink's: FedAvgResult.RoundOtherCPU.
	OtherCPU func() (time.Duration, error)
}

func (o FedAvgOptions) withDefaults() (FedAvgOptions, error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Rounds == 0 {
		o.Rounds = 2
	}
	if o.ModelBytes == 0 {
		o.ModelBytes = 32 << 20
	}
	if o.NodePoll <= 0 {
		o.NodePoll = 3 * time.Second
	}
	if o.ServerPoll <= 0 {
		o.ServerPoll = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Nodes < 1 || o.Rounds < 1 || o.ModelBytes < 4 || o.ModelBytes%4 != 0 {
		return o, fmt.Errorf("%d nodes, %d rounds, model of %d bytes: want at least 1 node and 1 round, and a model of a positive multiple of 4 bytes", o.Nodes, o.Rounds, o.ModelBytes)
	}
	return o, nil
}

// Payload is the size of the messages that carry the model: one .npy
// array of ModelBytes (128 bytes of header).
func (o FedAvgOptions) Payload() int64 { return int64(o.ModelBytes) + 128 }

// MovedEachWay is the model payload the SuperLink receives, and sends, in
// the whole run: the get_parameters reply, then per round and node a train
// TaskIns, a train TaskRes and an evaluate TaskIns, each once in and once
// out (the small messages left out).
func (o FedAvgOptions) MovedEachWay() int64 {
	return o.Payload() * int64(1+3*o.Nodes*o.Rounds)
}

// FedAvgResult is one FedAvg run.
type FedAvgResult struct {
	// Rounds is the wall time of each round (its train and evaluate
	// phases), RoundCPU the SuperLink's CPU time in it (10 ms resolution),
	// RoundOtherCPU that of FedAvgOptions.OtherCPU (nil without it).
	Rounds, RoundCPU, RoundOtherCPU []time.Duration
	// Wall is the time from the ServerApp's start (nodes connected) to its
	// summary, get_parameters included.
	Wall time.Duration
	// Memory is the SuperLink's RSS and peak RSS right after the run,
	// before it stops.
	Memory Memory
	// PageFaults is the SuperLink's minor page faults in the run.
	PageFaults int64
}

// RunFedAvg connects o.Nodes SuperNodes (app.RunNode) to s, waits until
// they are registered, and runs app.RunFedAvg with o.Rounds rounds over
// them; then it stops the nodes (DeleteNode). The nodes' ClientApp answers
// get_parameters with the model (zeros), train with an array of the same
// size whose values differ per node and round (as trained models do, so
// that the SuperLink cannot hold one copy for all), and evaluate with a
// loss. It returns an error if a node or the ServerApp fails.
func RunFedAvg(ctx context.Context, s *SuperLink, o FedAvgOptions) (FedAvgResult, error) {
	o, err := o.withDefaults()
	if err != nil {
		return FedAvgResult{}, err
	}
	nctx, stopNodes := context.WithCancel(ctx)
	defer stopNodes()
	var wg sync.WaitGroup
	nodeErr := make(chan error, o.Nodes)
	for i := range o.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !o.InStep && sleepCtx(nctx, o.NodePoll*time.Duration(i)/time.Duration(o.Nodes)) != nil {
				return
			}
			err := app.RunNode(nctx, app.NodeOptions{
				Server: s.Fleet, TLS: s.TLS, PollInterval: o.NodePoll, Logger: o.Logger,
				NewClient: func(int64) app.ClientApp { return &client{index: i, values: o.ModelBytes / 4} },
			})
			if err != nil {
				nodeErr <- fmt.Errorf("node %d: %w", i, err)
				stopNodes()
			}
		}()
	}
	defer wg.Wait()

	var res FedAvgResult
	rounds := &roundClock{s: s, other: o.OtherCPU}
	cpu0, err := s.CPU()
	if err != nil {
		return res, err
	}
	rounds.last = cpu0
	if o.OtherCPU != nil {
		if rounds.otherLast, err = o.OtherCPU(); err != nil {
			return res, err
		}
	}
	faults0, err := s.PageFaults()
	if err != nil {
		return res, err
	}
	start := time.Now()
	sum, err := app.RunFedAvg(nctx, app.ServerOptions{
		Server: s.Driver, TLS: s.TLS,
		Rounds: o.Rounds, MinNodes: o.Nodes,
		PollInterval: o.ServerPoll, NodesInterval: min(o.ServerPoll, 3*time.Second),
		RoundTimeout: 30 * time.Minute,
		Logger:       o.Logger,
		Out:          rounds,
	})
	res.Wall = time.Since(start)
	if err != nil {
		select {
		case nerr := <-nodeErr:
			err = errors.Join(err, nerr)
		default:
		}
		return res, fmt.Errorf("the ServerApp failed: %w (SuperLink log: %s)", err, s.LogFile)
	}
	if res.Memory, err = s.Memory(); err != nil {
		return res, err
	}
	faults, err := s.PageFaults()
	if err != nil {
		return res, err
	}
	res.PageFaults = faults - faults0
	for _, r := range sum.Rounds {
		res.Rounds = append(res.Rounds, r.Duration)
	}
	res.RoundCPU, res.RoundOtherCPU = rounds.cpu, rounds.otherCPU
	if len(res.Rounds) != o.Rounds {
		return res, fmt.Errorf("the ServerApp ran %d rounds, want %d", len(res.Rounds), o.Rounds)
	}
	if got := sum.Rounds[len(sum.Rounds)-1].Nodes; got != o.Nodes {
		return res, fmt.Errorf("the last round averaged %d nodes, want %d", got, o.Nodes)
	}
	stopNodes()
	wg.Wait()
	select {
	case nerr := <-nodeErr:
		return res, nerr
	default:
	}
	return res, nil
}

// roundClock is the ServerApp's Out: each "round" line it writes marks the
// end of a round, when the SuperLink's CPU time is read.
type roundClock struct {
	s         *SuperLink
	last      time.Duration
	cpu       []time.Duration
	other     func() (time.Duration, error)
	otherLast time.Duration
	otherCPU  []time.Duration
}

func (r *roundClock) Write(p []byte) (int, error) {
	if strings.HasPrefix(string(p), "round ") {
		if c, err := r.s.CPU(); err == nil {
			r.cpu = append(r.cpu, c-r.last)
			r.last = c
		}
		if r.other != nil {
			if c, err := r.other(); err == nil {
				r.otherCPU = append(r.otherCPU, c-r.otherLast)
				r.otherLast = c
			}
		}
	}
	return len(p), nil
}

// client is the harness's ClientApp: cheap, so that the machine's CPU goes
// to the SuperLink, with the message sizes of a real model.
type client struct {
	index  int // of the node
	values int // float32 values in the model
	fits   int
}

func (c *client) GetParameters(context.Context, app.Config) ([]app.Array, error) {
	return []app.Array{{DType: "float32", Shape: []int{c.values}, Data: make([]byte, 4*c.values)}}, nil
}

// Fit returns an array of the model's size filled with one value that
// differs per node and round.
func (c *client) Fit(_ context.Context, p []app.Array, _ app.Config) (app.FitRes, error) {
	if len(p) != 1 || len(p[0].Data) != 4*c.values {
		return app.FitRes{}, fmt.Errorf("train task with %d arrays, want one of %d float32 values", len(p), c.values)
	}
	c.fits++
	v := float32(c.index+1) + float32(c.fits)/1024
	return app.FitRes{
		Parameters:  []app.Array{{DType: "float32", Shape: []int{c.values}, Data: fill(4*c.values, v)}},
		NumExamples: 10,
		Metrics:     app.Config{"loss": 0.5},
	}, nil
}

func (c *client) Evaluate(context.Context, []app.Array, app.Config) (app.EvaluateRes, error) {
	return app.EvaluateRes{Loss: 0.25, NumExamples: 10, Metrics: app.Config{"mse": 0.25}}, nil
}

// fill returns n bytes holding v as little-endian float32s.
func fill(n int, v float32) []byte {
	b := make([]byte, n)
	if n < 4 {
		return b
	}
	binary.LittleEndian.PutUint32(b, math.Float32bits(v))
	for k := 4; k < n; k *= 2 {
		copy(b[k:], b[:k])
	}
	return b
}
