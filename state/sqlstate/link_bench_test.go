package sqlstate_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// BenchmarkLinkArray moves a 32 MiB float array as Flower 1.29.0 does (an
// ArrayRecord of one Array in ArrayChunks of 5 MiB) through a LinkState,
// with 2 and 16 nodes, on memlink, SQLite and PostgreSQL:
//
//   - down: the ServerApp pushes one message a node holding the same
//     array (its objects pushed once), every node pulls its message and
//     all its objects, at once, and confirms it (its reply is tiny);
//   - up: every node pushes a reply holding an array of its own, and the
//     ServerApp pulls every reply and its objects and confirms them.
//
// The array is a new one each round, as a model is. On PostgreSQL, down
// is measured also with the nodes on a second replica (replicas=2): the
// objects are then read from the database, once for all the nodes.
//
// An op is one such round. Besides time and the process's allocations, it
// reports the process's CPU (cpu-ms/op: user and system, every goroutine,
// from getrusage), and on PostgreSQL the server's (server-cpu-ms/op: the
// postmaster and its backends). B/op shows that an object pulled by many
// nodes is not copied for each: down with 16 nodes delivers 512 MiB.
//
//	go test ./state/sqlstate -run '^$' -bench LinkArray -benchtime 3x
func BenchmarkLinkArray(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	for _, nodes := range []int{2, 16} {
		for _, dir := range []string{"down", "up"} {
			name := fmt.Sprintf("nodes=%d/%s", nodes, dir)
			b.Run("memlink/"+name, func(b *testing.B) {
				benchLinkArray(b, memlink.New(state.Options{Logger: quiet}), nil, nodes, dir == "up", nil)
			})
			b.Run("SQLite/"+name, func(b *testing.B) {
				s, err := sqlstate.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "state.db"), sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: quiet}})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				benchLinkArray(b, s, nil, nodes, dir == "up", nil)
			})
			for _, replicas := range []int{1, 2} {
				if replicas == 2 && dir == "up" {
					continue
				}
				pg := "PostgreSQL/"
				if replicas == 2 {
					pg = "PostgreSQL/replicas=2/"
				}
				b.Run(pg+name, func(b *testing.B) {
					srv := pgtest.NewServer(b)
					pid, err := load.PostmasterPID(filepath.Join(srv.Dir, "data"))
					if err != nil {
						b.Fatal(err)
					}
					dsn := srv.NewDatabase(b)
					open := func() *sqlstate.State {
						s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Logger: quiet}})
						if err != nil {
							b.Fatal(err)
						}
						b.Cleanup(func() { s.Close() })
						return s
					}
					s, nodeSide := open(), state.LinkState(nil)
					if replicas == 2 {
						nodeSide = open()
					}
					benchLinkArray(b, s, nodeSide, nodes, dir == "up", func() time.Duration {
						d, err := load.TreeCPU(pid)
						if err != nil {
							b.Fatal(err)
						}
						return d
					})
				})
			}
		}
	}
}

// linkArraySize and linkChunk are the array and Flower 1.29.0's largest
// ArrayChunk.
const (
	linkArraySize = 32 << 20
	linkChunk     = 5 << 20
)

// chunked is an array as Flower's objects: its chunks' ids and bytes, in
// order.
type chunked struct {
	ids      []string
	contents [][]byte
}

func chunkArray(seed byte) chunked {
	var c chunked
	for off := 0; off < linkArraySize; off += linkChunk {
		id, content := statetest.FlowerObject("ArrayChunk", nil, statetest.Chunk(min(linkChunk, linkArraySize-off), seed+byte(off/linkChunk)))
		c.ids = append(c.ids, id)
		c.contents = append(c.contents, content)
	}
	return c
}

// arrayMessage builds a message of md holding array a (nil: a tiny
// payload instead), without copying a's chunks.
func arrayMessage(md *flwr129.Metadata, a *chunked) statetest.FlowerMessage {
	if a == nil {
		return statetest.NewFlowerMessage(md, []byte("tiny"))
	}
	return statetest.NewFlowerChunkedMessage(md, a.ids, a.contents)
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchLinkArray runs rounds on s; the nodes call ns (s when nil).
func benchLinkArray(b *testing.B, s, ns state.LinkState, n int, up bool, serverCPU func() time.Duration) {
	ctx := context.Background()
	if ns == nil {
		ns = s
	}
	ids := make([]uint64, n)
	for i := range ids {
		key := []byte(fmt.Sprintf("node-%d", i))
		if _, err := s.RegisterNode(ctx, key, 0); err != nil {
			b.Fatal(err)
		}
		var err error
		if ids[i], err = s.ActivateNode(ctx, key, state.HeartbeatMaxInterval); err != nil {
			b.Fatal(err)
		}
	}
	fab := []byte("fab")
	run, err := s.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := s.RequestToken(ctx, run)
	if _, _, _, err := s.StartApp(ctx, run); err != nil {
		b.Fatal(err)
	}
	models := make([]chunked, b.N+1)
	if !up {
		for i := range models {
			models[i] = chunkArray(byte(8 * i)) // 7 chunks: none in common
		}
	}
	updates := make([]chunked, n)
	if up {
		for i := range updates {
			updates[i] = chunkArray(byte(16 * (i + 1)))
		}
	}
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	pushObjects := func(s state.LinkState, node uint64, ids []string, m statetest.FlowerMessage) {
		for _, id := range ids {
			_, err := s.PushObject(ctx, run, node, id, m.Objects[id])
			must(err)
		}
	}
	var pullObjects func(s state.LinkState, node uint64, t *flwr129.ObjectTree)
	pullObjects = func(s state.LinkState, node uint64, t *flwr129.ObjectTree) {
		_, _, avail, err := s.PullObject(ctx, run, node, t.ObjectId)
		must(err)
		if !avail {
			b.Fatalf("object %s not available", t.ObjectId)
		}
		for _, c := range t.Children {
			pullObjects(s, node, c)
		}
	}
	round := func(r int) {
		if _, err := s.AppHeartbeat(ctx, tok); err != nil {
			b.Fatal(err)
		}
		msgs := make([]*flwr129.Message, n)
		trees := make([]*flwr129.ObjectTree, n)
		all := map[string][]byte{}
		for i, id := range ids {
			var a *chunked
			if !up {
				a = &models[r+1]
			}
			m := arrayMessage(&flwr129.Metadata{RunId: run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: id,
				GroupId: fmt.Sprint(r), Ttl: 3600, MessageType: "train", CreatedAt: float64(time.Now().UnixNano()) / 1e9}, a)
			msgs[i], trees[i] = m.Message, m.Tree
			for k, v := range m.Objects {
				all[k] = v
			}
		}
		insIDs, push, err := s.PushInstructions(ctx, run, msgs, trees)
		must(err)
		pushObjects(s, state.SuperLinkNodeID, push, statetest.FlowerMessage{Objects: all})
		var wg sync.WaitGroup
		for i, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, tree, err := ns.PullInstruction(ctx, id)
				if err != nil || m == nil {
					b.Errorf("node %d pulled %v: %v", id, m, err)
					return
				}
				pullObjects(ns, id, tree)
				must(ns.ConfirmMessageReceived(ctx, run, id, m.Metadata.MessageId))
				var a *chunked
				if up {
					a = &updates[i]
				}
				md := m.Metadata
				res := arrayMessage(&flwr129.Metadata{RunId: run, SrcNodeId: id, DstNodeId: state.SuperLinkNodeID, ReplyToMessageId: md.MessageId,
					GroupId: md.GroupId, Ttl: 600, MessageType: md.MessageType, CreatedAt: float64(time.Now().UnixNano()) / 1e9}, a)
				_, rpush, err := ns.PushReplies(ctx, id, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 1)
				if err != nil {
					b.Errorf("node %d: %v", id, err)
					return
				}
				pushObjects(ns, id, rpush, res)
			}()
		}
		wg.Wait()
		replies, rtrees, err := s.PullReplies(ctx, run, insIDs)
		must(err)
		if len(replies) != n {
			b.Fatalf("%d replies, want %d", len(replies), n)
		}
		for i, r := range replies {
			if r.Error != nil {
				b.Fatalf("reply %v", r)
			}
			pullObjects(s, state.SuperLinkNodeID, rtrees[i])
			must(s.ConfirmMessageReceived(ctx, run, state.SuperLinkNodeID, r.Metadata.MessageId))
		}
		_, _, err = s.PullReplies(ctx, run, nil)
		must(err)
	}
	round(-1) // warm: the first round's costs are the schema's, the connections'
	if st, err := s.LinkStats(ctx); err != nil || st.Objects != 0 {
		b.Fatalf("after a round: %+v %v, want no object held", st, err)
	}
	b.SetBytes(int64(n) * linkArraySize)
	b.ReportAllocs()
	var server time.Duration
	if serverCPU != nil {
		server = serverCPU()
	}
	cpu := cpuNow()
	b.ResetTimer()
	for r := range b.N {
		round(r)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuNow()-cpu)/1e6/float64(b.N), "cpu-ms/op")
	if serverCPU != nil {
		b.ReportMetric(float64(serverCPU()-server)/1e6/float64(b.N), "server-cpu-ms/op")
	}
	if st, err := s.LinkStats(ctx); err != nil || st.Objects != 0 || st.Messages != 0 {
		b.Fatalf("after the rounds: %+v %v, want nothing held", st, err)
	}
}
