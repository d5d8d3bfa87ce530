package superlink

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/bigbuf"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestPulledObjectBuffersReused: objects read back from the object files
// are answered in buffers of bigbuf.Shared, which come back once gRPC has
// written them; pulled many times at once, each object still arrives byte
// for byte (a buffer is never reused while an answer is written from it).
func TestPulledObjectBuffersReused(t *testing.T) {
	l := serveLink129On(t, Options{}, memstate.Options{ObjectDir: t.TempDir()})
	node := newSigner(t)
	id := l.join(t, node)
	run, app := l.running(t)
	now := float64(time.Now().Unix())
	ins := l.instruct(t, run, app, node, id)
	const chunks = 4
	var parts [][]byte
	for i := range chunks {
		parts = append(parts, statetest.Chunk(bigbuf.Min+i*4096, byte(i+1)))
	}
	reply := statetest.NewFlowerArrayMessage(&flwr129.Metadata{RunId: run, SrcNodeId: id, DstNodeId: state.SuperLinkNodeID, ReplyToMessageId: ins.Message.Metadata.MessageId,
		Ttl: 600, MessageType: "train", CreatedAt: now}, parts...)
	rp, err := l.fleet.PushMessages(node.ctx(t), &flwr129.PushMessagesRequest{Node: &flwr129.Node{NodeId: id},
		MessagesList: []*flwr129.Message{reply.Message}, MessageObjectTrees: []*flwr129.ObjectTree{reply.Tree}})
	if err != nil {
		t.Fatal(err)
	}
	for _, oid := range rp.GetObjectsToPush() {
		if _, err := l.fleet.PushObject(node.ctx(t), &flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: id}, RunId: run, ObjectId: oid, ObjectContent: reply.Objects[oid]}); err != nil {
			t.Fatal(err)
		}
	}
	chunkIDs := reply.Tree.Children[0].Children[0].Children[0].Children
	if len(chunkIDs) != chunks {
		t.Fatalf("the reply names %d chunks, want %d", len(chunkIDs), chunks)
	}
	var wg sync.WaitGroup
	for w := range 2 * chunks {
		wg.Go(func() {
			for k := range 3 {
				oid := chunkIDs[(w+k)%chunks].ObjectId
				o, err := l.appIo.PullObject(app, &flwr129.PullObjectRequest{Node: &flwr129.Node{NodeId: state.SuperLinkNodeID}, RunId: run, ObjectId: oid})
				if err != nil || !o.GetObjectAvailable() || !bytes.Equal(o.GetObjectContent(), reply.Objects[oid]) {
					t.Errorf("PullObject %s: available %v, %d bytes, %v; want the %d bytes pushed", oid, o.GetObjectAvailable(), len(o.GetObjectContent()), err, len(reply.Objects[oid]))
					return
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for bigbuf.Shared.Kept() < bigbuf.Min {
		if time.Now().After(deadline) {
			t.Fatalf("bigbuf.Shared keeps %d bytes after %d pulls from the object files: the answers' buffers did not come back", bigbuf.Shared.Kept(), 6*chunks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Whole, with their slack: a request carrying an object of the same
	// size (its bytes and a few fields) is received into one.
	largest := reply.Objects[chunkIDs[chunks-1].ObjectId]
	if b := bigbuf.Shared.Reuse(len(largest) + 100); b == nil {
		t.Errorf("no kept buffer takes a request of %d bytes: the answers' buffers came back without their slack", len(largest)+100)
	}
}
