package memlink_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestConformanceObjectFiles runs the conformance suite with every object
// kept in a file.
func TestConformanceObjectFiles(t *testing.T) {
	statetest.RunLink(t, statetest.LinkOptions{NewStore: func(t *testing.T) statetest.LinkOpener {
		return func(t *testing.T, c statetest.Config) state.LinkState {
			dir := t.TempDir()
			s := memlink.New(state.Options{Now: c.Now, Logger: c.Logger, Link: c.Link, ObjectDir: dir})
			memlink.SetObjectFileMin(s, 1)
			t.Cleanup(func() {
				if n := len(readDir(t, dir)); n != 0 {
					t.Errorf("%s holds %d names: object files must have none", dir, n)
				}
			})
			return s
		}
	}})
}

// TestObjectFiles: a large object a node pushes lives in a nameless
// object file of the object directory from its push to the confirmation
// of its message, is pulled byte for byte, and its space is then reused.
func TestObjectFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := memlink.New(state.Options{Logger: slog.New(slog.DiscardHandler), ObjectDir: dir})
	defer s.Close()
	_, run, node, ins := oneInstruction(t, s, memlink.ObjectFileMin)
	replies := 2*memlink.ObjectShards + 1
	for i := range replies {
		if i > 0 {
			ins = sendInstruction(t, s, run, node, memlink.ObjectFileMin+i)
		}
		pushAll(t, s, run, state.SuperLinkNodeID, ins)
		if _, n := openIn(t, dir); i == 0 && n != 0 {
			t.Errorf("%d files of %s open after the ServerApp's push: what it pushes stays in memory", n, dir)
		}
		rep := reply(t, s, ins, node, memlink.ObjectFileMin+i)
		chunk := rep.Tree.Children[0].Children[0].ObjectId
		want := bytes.Clone(rep.Objects[chunk])
		pushAll(t, s, run, node, rep)
		if _, n := openIn(t, dir); n != min(i+1, memlink.ObjectShards) {
			t.Fatalf("reply %d: %d files of %s open, want %d (the object files written so far)", i, n, dir, min(i+1, memlink.ObjectShards))
		}
		if names := readDir(t, dir); len(names) != 0 {
			t.Errorf("the object directory has names %v: object files must have none", names)
		}
		rep.Objects[chunk][0] ^= 1 // the pusher's buffer is not what is kept
		got, found, avail, err := s.PullObject(ctx, run, state.SuperLinkNodeID, chunk)
		if err != nil || !found || !avail || !bytes.Equal(got, want) {
			t.Fatalf("PullObject: %d bytes, found %v, available %v, %v; want the %d bytes pushed", len(got), found, avail, err, len(want))
		}
		if err := s.ConfirmMessageReceived(ctx, run, state.SuperLinkNodeID, rep.Message.Metadata.MessageId); err != nil {
			t.Fatal(err)
		}
	}
	// Each file held one reply at a time: with its space reused, none
	// grew past one reply (and its page).
	size, _ := openIn(t, dir)
	if most := int64(memlink.ObjectShards) * (memlink.ObjectFileMin + int64(replies) + 4096); size > most {
		t.Errorf("the object files hold %d bytes after %d replies confirmed one by one, want at most %d: the space of a confirmed reply must be reused", size, replies, most)
	}
}

// TestObjectFilesFail: when the directory cannot take the file, the object
// is kept in memory, and the failure logged.
func TestObjectFilesFail(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "gone")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	s := memlink.New(state.Options{Logger: slog.New(slog.NewTextHandler(&log, nil)), ObjectDir: dir})
	defer s.Close()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	_, run, node, ins := oneInstruction(t, s, 10)
	pushAll(t, s, run, state.SuperLinkNodeID, ins)
	rep := reply(t, s, ins, node, memlink.ObjectFileMin)
	chunk := rep.Tree.Children[0].Children[0].ObjectId
	pushAll(t, s, run, node, rep)
	got, _, avail, err := s.PullObject(ctx, run, state.SuperLinkNodeID, chunk)
	if err != nil || !avail || !bytes.Equal(got, rep.Objects[chunk]) {
		t.Fatalf("PullObject: %d bytes, available %v, %v; want the %d bytes pushed", len(got), avail, err, len(rep.Objects[chunk]))
	}
	if !strings.Contains(log.String(), "object kept in memory") || !strings.Contains(log.String(), dir) {
		t.Errorf("log %q: want a warning that names %s", log.String(), dir)
	}
}

// reply has node pull ins and push a reply whose payload is one chunk of
// n bytes (not yet pushed as an object).
func reply(t *testing.T, s *memlink.Store, ins statetest.FlowerMessage, node uint64, n int) statetest.FlowerMessage {
	t.Helper()
	ctx := context.Background()
	if m, _, err := s.PullInstruction(ctx, node); err != nil || m == nil {
		t.Fatalf("PullInstruction: %v %v", m, err)
	}
	md := ins.Message.Metadata
	rep := statetest.NewFlowerMessage(&flwr129.Metadata{RunId: md.RunId, SrcNodeId: node, DstNodeId: state.SuperLinkNodeID,
		ReplyToMessageId: md.MessageId, Ttl: 60, MessageType: md.MessageType, CreatedAt: float64(time.Now().UnixNano()) / 1e9}, statetest.Chunk(n, 2))
	if _, _, err := s.PushReplies(ctx, node, []*flwr129.Message{rep.Message}, []*flwr129.ObjectTree{rep.Tree}, 0); err != nil {
		t.Fatalf("PushReplies: %v", err)
	}
	return rep
}

func TestCheckObjectDir(t *testing.T) {
	dir := t.TempDir()
	if err := memlink.CheckObjectDir(dir); err != nil {
		t.Errorf("CheckObjectDir(%s): %v", dir, err)
	}
	if names := readDir(t, dir); len(names) != 0 {
		t.Errorf("the check left %v", names)
	}
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{filepath.Join(dir, "missing"), file} {
		if err := memlink.CheckObjectDir(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("CheckObjectDir(%s): %v, want an error that names it", bad, err)
		}
	}
}

// pushAll pushes m's objects as node (or the ServerApp).
func pushAll(t *testing.T, s *memlink.Store, run, node uint64, m statetest.FlowerMessage) {
	t.Helper()
	for id, b := range m.Objects {
		if ok, err := s.PushObject(context.Background(), run, node, id, b); err != nil || !ok {
			t.Fatalf("PushObject %s: %v %v", id, ok, err)
		}
	}
}

// openIn returns the total size and the number of this process's open
// files in dir.
func openIn(t *testing.T, dir string) (size int64, n int) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		p := filepath.Join("/proc/self/fd", fd.Name())
		if l, err := os.Readlink(p); err == nil && strings.HasPrefix(l, dir+"/") {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			size += fi.Size()
			n++
		}
	}
	return size, n
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
