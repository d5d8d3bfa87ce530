package superlink

import (
	"context"
	"fmt"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// Every signed Flower 1.29.0 Fleet call costs an ECDSA P-384 verification
// (about a millisecond of CPU) and its work. Two token buckets of the
// node guard bound what a peer can make the SuperLink spend on them
// (NodeLimits.CallRate and AuthFailureRate):
//
//   - failures, by peer (peerKey): each call that fails node
//     authentication takes a token; a peer whose bucket is empty has its
//     signed calls refused before they are verified. Only a peer's own
//     failures drain its bucket, so a flood of bad signatures from one
//     address leaves a node calling from another alone.
//   - calls, by node id: each call whose signature verified takes its
//     cost; a call that claims a node whose bucket lacks its cost is
//     refused before it is verified. Only verified calls drain a node's
//     bucket, so calls that claim a node's id without its key cannot
//     exhaust it.
//
// Both refusals are Unavailable: Flower 1.29.0's SuperNode retries that
// code with exponential backoff (1 s, doubling, at most 20 s), where it
// gives up on ResourceExhausted (its PullMessages or PushMessages then
// end the SuperNode) and shuts itself down on Unauthenticated
// (flwr/common/retry_invoker.go's make_simple_grpc_retry_invoker).

// admit lets a signed call of method through the call limits and node
// authentication (nodeAuth.verify, whose results it returns but the
// node): claimed is the node id the call names (bind), cost what it
// costs in call units. RegisterNode is bounded by the registration rate
// limit instead: a new key has no node yet.
func (f *fleet129) admit(ctx context.Context, method string, bind bool, claimed uint64, cost int) ([]byte, error) {
	g := f.g
	p := peerKey(ctx)
	if !g.failures.holds(p, 1) {
		err := status.Errorf(codes.Unavailable, "%s: too many calls from %s failed node authentication: this SuperLink verifies %d at once and then %g a second "+
			"from one peer; retry in a few seconds, signed with the node's registered key", method, p, g.l.AuthFailureBurst, g.l.AuthFailureRate)
		g.refuse(ctx, RefusedAuthFailures, fmt.Sprintf("%d at once, %g a second", g.l.AuthFailureBurst, g.l.AuthFailureRate), err)
		return nil, err
	}
	if bind && !g.calls.holds(nodeBucket(claimed), float64(cost)) {
		return nil, g.callRefusal(ctx, method, claimed)
	}
	pk, id, known, err := f.auth.verify(ctx, bind, claimed)
	// A key that is no node's has no business but registering.
	if status.Code(err) == codes.Unauthenticated || err == nil && !known && method != "RegisterNode" {
		g.failures.take(p)
	}
	if err != nil {
		return nil, err
	}
	if known && !g.calls.takeN(nodeBucket(id), float64(cost)) {
		return nil, g.callRefusal(ctx, method, id)
	}
	return pk, nil
}

// nodeBucket is the key of a node's bucket of calls.
func nodeBucket(id uint64) string { return strconv.FormatUint(id, 10) }

// callRefusal counts, logs and returns the refusal of a call of node id
// past its rate limit.
func (g *nodeGuard) callRefusal(ctx context.Context, method string, id uint64) error {
	err := status.Errorf(codes.Unavailable, "%s: node %d made too many calls: this SuperLink takes %d call units at once from a node and then %g a second "+
		"(a call is 1, a PushMessages 1 more per object its tree names); retry in a few seconds", method, id, g.l.CallBurst, g.l.CallRate)
	g.refuse(ctx, RefusedCallRate, fmt.Sprintf("%d at once, %g a second", g.l.CallBurst, g.l.CallRate), err)
	return err
}

// pushCost is the cost of a PushMessages in call units: 1, and 1 per
// object its trees name, each a PushObject to come and an object the
// SuperLink holds owed meanwhile. Counting stops past a tree's bound
// (state.TreeObjects), which CheckTreeShape refuses.
func pushCost(r *flwr129.PushMessagesRequest) int {
	n := 1
	for _, t := range r.GetMessageObjectTrees() {
		n += state.TreeObjects(t)
	}
	return n
}
