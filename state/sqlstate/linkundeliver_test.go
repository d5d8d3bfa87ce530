package sqlstate

import (
	"context"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestLinkUndeliver: a 1.29 message whose delivery's commit may have
// happened though the call failed is cleared once the database answers,
// and goes again to its node through any replica, though the replica that
// delivered it lives.
func TestLinkUndeliver(t *testing.T) {
	ctx := context.Background()
	a, b := sharedPair(t)
	node, _ := a.RegisterNode(ctx, []byte("key"), 0)
	if _, err := a.ActivateNode(ctx, []byte("key"), 30); err != nil {
		t.Fatal(err)
	}
	fab := []byte("fab")
	run, _ := a.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	a.RequestToken(ctx, run)
	if _, _, _, err := a.StartApp(ctx, run); err != nil {
		t.Fatal(err)
	}
	m := statetest.NewFlowerMessage(&flwr129.Metadata{RunId: run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: node,
		Ttl: 3600, MessageType: "train", CreatedAt: float64(time.Now().Unix())}, []byte("w"))
	_, push, err := a.PushInstructions(ctx, run, []*flwr129.Message{m.Message}, []*flwr129.ObjectTree{m.Tree})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range push {
		if _, err := a.PushObject(ctx, run, state.SuperLinkNodeID, id, m.Objects[id]); err != nil {
			t.Fatal(err)
		}
	}
	if got, _, err := a.PullInstruction(ctx, node); err != nil || got == nil {
		t.Fatalf("pull: %v %v", got, err)
	}
	u := undelivery{link: true}
	if err := a.db.QueryRowContext(ctx, `SELECT seq, delivered_at, delivered_by FROM link_ins WHERE id = $1`, m.Message.Metadata.MessageId).Scan(&u.seq, &u.at, &u.by); err != nil {
		t.Fatal(err)
	}
	if got, _, err := b.PullInstruction(ctx, node); err != nil || got != nil {
		t.Fatalf("pull through the other replica: %v %v, want nothing", got, err)
	}
	other := u
	other.at++ // not this delivery: left alone
	undeliverAll(t, a, other, u)
	got, _, err := b.PullInstruction(ctx, node)
	if err != nil || got.GetMetadata().GetMessageId() != m.Message.Metadata.MessageId {
		t.Fatalf("pull after the delivery was cleared: %v %v, want the message again", got, err)
	}
	if got, _, err := a.PullInstruction(ctx, node); err != nil || got != nil {
		t.Fatalf("pull once more: %v %v, want nothing", got, err)
	}
}
