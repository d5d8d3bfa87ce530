package load

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/transport"
)

// RPCOptions describe the small-calls workload.
type RPCOptions struct {
	// Nodes is the number of SuperNodes connected (default 1000), each
	// with its own TLS connection and node id.
	Nodes int
	// Levels are the numbers of nodes that call at once, each as fast as
	// it can (a call as soon as the last one returned), one level after
	// the other (default 1, 10, 100 and Nodes).
	Levels []int
	// Duration is how long each level lasts (default 5s).
	Duration time.Duration
}

// RPCLevel is what one level measured.
type RPCLevel struct {
	Active   int           // nodes calling
	Calls    int           // calls answered
	Errors   int           // calls failed
	Wall     time.Duration // of the level
	CPU      time.Duration // the SuperLink's CPU time in it
	P50, P99 time.Duration // call latency
}

// PerSecond is the rate of calls answered.
func (l RPCLevel) PerSecond() float64 { return float64(l.Calls) / l.Wall.Seconds() }

// CPUPerCall is the SuperLink's CPU time per call answered.
func (l RPCLevel) CPUPerCall() time.Duration {
	if l.Calls == 0 {
		return 0
	}
	return l.CPU / time.Duration(l.Calls)
}

// RunRPCs connects o.Nodes nodes (CreateNode on a connection each), then for
// each level lets that many of them alternate Ping and PullTaskIns (no task
// is ever pushed, so every PullTaskIns is empty, as an idle 1.8.0 node's)
// back to back for o.Duration, and measures the rate, the latency and the
// SuperLink's CPU time. The nodes leave (DeleteNode) at the end.
func RunRPCs(ctx context.Context, s *SuperLink, o RPCOptions) ([]RPCLevel, error) {
	if o.Nodes <= 0 {
		o.Nodes = 1000
	}
	if len(o.Levels) == 0 {
		for _, l := range []int{1, 10, 100} {
			if l < o.Nodes {
				o.Levels = append(o.Levels, l)
			}
		}
		o.Levels = append(o.Levels, o.Nodes)
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	creds, err := transport.ClientCredentials(s.TLS)
	if err != nil {
		return nil, err
	}
	type node struct {
		c    pb.FleetClient
		self *pb.Node
	}
	nodes := make([]node, o.Nodes)
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range nodes {
		conn, err := grpc.NewClient(s.Fleet, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		conns = append(conns, conn)
		nodes[i].c = pb.NewFleetClient(conn)
	}
	// Register in parallel: 1000 TLS handshakes one by one take a while.
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	sem := make(chan struct{}, 32)
	for i := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r, err := nodes[i].c.CreateNode(ctx, &pb.CreateNodeRequest{PingInterval: 300})
			if err != nil {
				errs[i] = fmt.Errorf("CreateNode of node %d: %w", i, err)
				return
			}
			nodes[i].self = r.GetNode()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := range nodes {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				_, _ = nodes[i].c.DeleteNode(dctx, &pb.DeleteNodeRequest{Node: nodes[i].self})
			}()
		}
		wg.Wait()
	}()

	var out []RPCLevel
	for _, active := range o.Levels {
		active = min(active, len(nodes))
		var stop atomic.Bool
		timer := time.AfterFunc(o.Duration, func() { stop.Store(true) })
		lat := make([][]time.Duration, active)
		fails := make([]int, active)
		cpu0, err := s.CPU()
		if err != nil {
			timer.Stop()
			return out, err
		}
		start := time.Now()
		for i := range active {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := nodes[i]
				for k := 0; !stop.Load() && ctx.Err() == nil; k++ {
					t0 := time.Now()
					var err error
					if k%2 == 0 {
						_, err = n.c.Ping(ctx, &pb.PingRequest{Node: n.self, PingInterval: 300})
					} else {
						_, err = n.c.PullTaskIns(ctx, &pb.PullTaskInsRequest{Node: n.self})
					}
					if err != nil {
						fails[i]++
						continue
					}
					lat[i] = append(lat[i], time.Since(t0))
				}
			}()
		}
		wg.Wait()
		wall := time.Since(start)
		cpu1, err := s.CPU()
		if err != nil {
			return out, err
		}
		all := slices.Concat(lat...)
		slices.Sort(all)
		l := RPCLevel{Active: active, Calls: len(all), Wall: wall, CPU: cpu1 - cpu0}
		for _, f := range fails {
			l.Errors += f
		}
		if len(all) > 0 {
			l.P50, l.P99 = all[len(all)/2], all[len(all)*99/100]
		}
		out = append(out, l)
		if err := ctx.Err(); err != nil {
			return out, err
		}
	}
	return out, nil
}
