package state

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The limits of NewNode that a NodeLimitError names.
const (
	LimitMaxNodes       = "max_nodes"
	LimitMaxPerIdentity = "max_nodes_per_identity"
)

// NodeLimitError is CreateNode's refusal of a node that does not fit a
// limit of its NewNode while every node the limit counts is online. It is
// a gRPC status error, ResourceExhausted, whose message names the limit
// and what to do; a 1.8.0 SuperNode retries it with backoff.
type NodeLimitError struct {
	// Limit is LimitMaxNodes or LimitMaxPerIdentity.
	Limit string
	// Max is the limit's value.
	Max int
	// Identity is the client-certificate identity, for LimitMaxPerIdentity.
	Identity string
}

func (e *NodeLimitError) Error() string {
	if e.Limit == LimitMaxPerIdentity {
		return fmt.Sprintf("CreateNode: the client certificate %s holds %d nodes, all online, the SuperLink's limit per certificate: "+
			"delete the nodes it no longer uses (DeleteNode), or retry once one of them has missed its ping", e.Identity, e.Max)
	}
	return fmt.Sprintf("CreateNode: the SuperLink holds %d nodes, all online, its limit: retry later (a node that misses its ping makes room)", e.Max)
}

// GRPCStatus makes the error a gRPC status error.
func (e *NodeLimitError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.Error())
}

// Evicted is a node forgotten by CreateNode to make room under a limit:
// the one offline the longest of those the limit counts.
type Evicted struct {
	ID           int64
	PingInterval float64
	Limit        string // LimitMaxNodes or LimitMaxPerIdentity
}

// Revoked is a node forgotten by RevokeNodes.
type Revoked struct {
	ID           int64
	PingInterval float64
	Identity     string
	Certificate  string
	Undelivered  int // TaskIns it never pulled
}
