package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/transport"
)

func TestBackoffDelays(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	cases := []struct {
		name string
		b    backoff
		at   []time.Duration // failure times after t0
		want []time.Duration // delays; -1 = give up
	}{
		{"doubling to the cap, full jitter draw", backoff{Base: time.Second, Max: 8 * time.Second, Rand: func() float64 { return 1 }},
			[]time.Duration{0, 1, 2, 3, 4, 5}, []time.Duration{1e9, 2e9, 4e9, 8e9, 8e9, 8e9}},
		{"lowest jitter draw halves", backoff{Base: time.Second, Max: 8 * time.Second, Rand: func() float64 { return 0 }},
			[]time.Duration{0, 1, 2, 3}, []time.Duration{5e8, 1e9, 2e9, 4e9}},
		{"max retries", backoff{Base: time.Second, Max: time.Minute, MaxRetries: 2, Rand: func() float64 { return 1 }},
			[]time.Duration{0, 1, 2}, []time.Duration{1e9, 2e9, -1}},
		{"negative: no retry", backoff{Base: time.Second, MaxRetries: -1}, []time.Duration{0}, []time.Duration{-1}},
		{"negative wait: no retry", backoff{Base: time.Second, MaxWaitTime: -1}, []time.Duration{0}, []time.Duration{-1}},
		{"max wait clips then stops", backoff{Base: time.Second, Max: time.Minute, MaxWaitTime: 5 * time.Second, Rand: func() float64 { return 1 }},
			[]time.Duration{0, 1e9, 3e9, 4.5e9, 5e9}, []time.Duration{1e9, 2e9, 2e9, 5e8, -1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := streak{b: c.b}
			for i, at := range c.at {
				d, ok := s.next(t0.Add(at))
				if c.want[i] < 0 {
					if ok {
						t.Errorf("failure %d: retry in %s, want give up", i+1, d)
					}
					continue
				}
				if !ok || d != c.want[i] {
					t.Errorf("failure %d: %s %v, want %s", i+1, d, ok, c.want[i])
				}
			}
		})
	}
}

// TestCallerRetries runs caller.do on a fake clock (synctest): three
// Unavailable failures are retried after exactly the backoff delays, and
// the fourth call's success ends it; a non-retryable code is not retried.
func TestCallerRetries(t *testing.T) {
	// A closed port: the probe that classifies Unavailable finds nothing
	// there, a network failure, so the call is retried.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	synctest.Test(t, func(t *testing.T) {
		c := &caller{addr: addr, tls: transport.ClientOptions{Insecure: true}, log: slog.New(slog.DiscardHandler), now: time.Now,
			b: backoff{Base: time.Second, Max: time.Minute, Rand: func() float64 { return 1 }}}
		calls := 0
		start := time.Now()
		err := c.do(context.Background(), "Test", func(context.Context) error {
			calls++
			if calls <= 3 {
				return status.Error(codes.Unavailable, "connection refused")
			}
			return nil
		})
		if err != nil || calls != 4 {
			t.Fatalf("do = %v after %d calls, want nil after 4", err, calls)
		}
		if got := time.Since(start); got != 7*time.Second {
			t.Errorf("waited %s, want 1+2+4 = 7s", got)
		}

		calls = 0
		err = c.do(context.Background(), "Test", func(context.Context) error {
			calls++
			return status.Error(codes.InvalidArgument, "bad request")
		})
		if calls != 1 || status.Code(err) != codes.InvalidArgument {
			t.Errorf("InvalidArgument: %d calls, %v", calls, err)
		}

		c.b.MaxRetries = 2
		calls = 0
		err = c.do(context.Background(), "Test", func(context.Context) error {
			calls++
			return status.Error(codes.Unavailable, "connection refused")
		})
		if !errors.Is(err, ErrGaveUp) || calls != 3 {
			t.Errorf("MaxRetries 2: %d calls, %v; want 3 calls and ErrGaveUp", calls, err)
		}

		ctx, cancel := context.WithCancel(context.Background())
		c.b.MaxRetries = 0
		go func() {
			time.Sleep(10 * time.Second)
			cancel()
		}()
		err = c.do(ctx, "Test", func(context.Context) error { return status.Error(codes.Unavailable, "down") })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: %v", err)
		}
	})
}

// slowFleet is a Fleet API that takes delay to answer the PullTaskIns that
// hands out its one task (as a large model on a slow link would), and hands
// it out once, as a SuperLink does.
type slowFleet struct {
	pb.UnimplementedFleetServer
	delay  time.Duration
	once   sync.Once
	pushed chan *pb.TaskRes
}

func (f *slowFleet) CreateNode(context.Context, *pb.CreateNodeRequest) (*pb.CreateNodeResponse, error) {
	return &pb.CreateNodeResponse{Node: &pb.Node{NodeId: 7}}, nil
}

func (f *slowFleet) Ping(context.Context, *pb.PingRequest) (*pb.PingResponse, error) {
	return &pb.PingResponse{Success: true}, nil
}

func (f *slowFleet) DeleteNode(context.Context, *pb.DeleteNodeRequest) (*pb.DeleteNodeResponse, error) {
	return &pb.DeleteNodeResponse{}, nil
}

func (f *slowFleet) PullTaskIns(ctx context.Context, _ *pb.PullTaskInsRequest) (*pb.PullTaskInsResponse, error) {
	var list []*pb.TaskIns
	f.once.Do(func() {
		time.Sleep(f.delay)
		rs, _ := getParametersIns(Config{})
		list = []*pb.TaskIns{{TaskId: "83bddbf3-413b-4b2c-9a1e-0bdfad5084ab", GroupId: "0", RunId: 1, Task: &pb.Task{
			Producer: &pb.Node{Anonymous: true}, Consumer: &pb.Node{NodeId: 7}, CreatedAt: unixSeconds(time.Now()),
			Ttl: 3600, TaskType: TaskGetParameters, Recordset: rs}}}
	})
	return &pb.PullTaskInsResponse{TaskInsList: list}, nil
}

func (f *slowFleet) PushTaskRes(_ context.Context, r *pb.PushTaskResRequest) (*pb.PushTaskResResponse, error) {
	f.pushed <- r.GetTaskResList()[0]
	return &pb.PushTaskResResponse{}, nil
}

// TestSlowTaskTransferNotCutShort: a PullTaskIns that takes longer than
// the deadline of small calls (a large model on a slow link) still
// delivers its task: the SuperLink hands a task out once, so a PullTaskIns
// cut short would lose it.
func TestSlowTaskTransferNotCutShort(t *testing.T) {
	old := callTimeout
	callTimeout = 100 * time.Millisecond
	defer func() { callTimeout = old }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fleet := &slowFleet{delay: 500 * time.Millisecond, pushed: make(chan *pb.TaskRes, 1)}
	srv := grpc.NewServer()
	pb.RegisterFleetServer(srv, fleet)
	go srv.Serve(lis)
	defer srv.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunNode(ctx, NodeOptions{Server: lis.Addr().String(), TLS: transport.ClientOptions{Insecure: true},
			PollInterval: 20 * time.Millisecond, Logger: testLogger(t, "node")})
	}()
	select {
	case r := <-fleet.pushed:
		if got := r.GetTask().GetAncestry(); len(got) != 1 || got[0] != "83bddbf3-413b-4b2c-9a1e-0bdfad5084ab" {
			t.Errorf("answer to %v, want the slow task", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("the slowly delivered task was never answered: its PullTaskIns was cut short")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RunNode: %v", err)
	}
}
