package memlink_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
	"github.com/sepal-fl/sepal/state/statetest"
)

// oneInstruction registers and activates a node, starts a run and pushes
// it an instruction whose payload is one chunk of n bytes (not yet
// pushed as an object).
func oneInstruction(tb testing.TB, s *memlink.Store, n int) (key []byte, run, node uint64, m statetest.FlowerMessage) {
	ctx := context.Background()
	key = []byte("node")
	if _, err := s.RegisterNode(ctx, key, 0); err != nil {
		tb.Fatal(err)
	}
	node, err := s.ActivateNode(ctx, key, state.HeartbeatMaxInterval)
	if err != nil {
		tb.Fatal(err)
	}
	fab := []byte("fab")
	run, err = s.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := s.RequestToken(ctx, run); err != nil {
		tb.Fatal(err)
	}
	if _, _, _, err := s.StartApp(ctx, run); err != nil {
		tb.Fatal(err)
	}
	return key, run, node, sendInstruction(tb, s, run, node, n)
}

// sendInstruction pushes node an instruction whose payload is one chunk
// of n bytes (not yet pushed as an object).
func sendInstruction(tb testing.TB, s *memlink.Store, run, node uint64, n int) statetest.FlowerMessage {
	m := statetest.NewFlowerMessage(&flwr129.Metadata{RunId: run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: node,
		Ttl: 3600, MessageType: "train", CreatedAt: float64(time.Now().UnixNano()) / 1e9}, statetest.Chunk(n, byte(n)))
	if _, _, err := s.PushInstructions(context.Background(), run, []*flwr129.Message{m.Message}, []*flwr129.ObjectTree{m.Tree}); err != nil {
		tb.Fatal(err)
	}
	return m
}

func TestConformance(t *testing.T) {
	statetest.RunLink(t, statetest.LinkOptions{NewStore: func(t *testing.T) statetest.LinkOpener {
		return func(t *testing.T, c statetest.Config) state.LinkState {
			return memlink.New(state.Options{Now: c.Now, Logger: c.Logger, Link: c.Link})
		}
	}})
}

// BenchmarkCallsDuringPushes measures a small call (NodeOfKey, which every
// signed Fleet call makes) while 5 MiB objects are pushed without pause
// from two goroutines, as nodes do: a push's SHA-256 must not hold the
// store's lock, or every call waits for it.
//
//	go test ./state/memlink -run '^$' -bench CallsDuringPushes
func BenchmarkCallsDuringPushes(b *testing.B) {
	ctx := context.Background()
	s := memlink.New(state.Options{Logger: slog.New(slog.DiscardHandler)})
	key, run, node, m := oneInstruction(b, s, 5<<20)
	chunk := m.Tree.Children[0].Children[0].ObjectId
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.PushObject(ctx, run, node, chunk, m.Objects[chunk]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for b.Loop() {
		if id, ok, err := s.NodeOfKey(ctx, key); err != nil || !ok || id != node {
			b.Fatalf("NodeOfKey: %d %v %v", id, ok, err)
		}
	}
	close(stop)
	wg.Wait()
}
