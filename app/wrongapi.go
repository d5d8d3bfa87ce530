package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sepal-fl/sepal/flwrproto"
)

// The two APIs of a SuperLink, with the flower-superlink flag and default
// port of each.
type api struct {
	name, service, who, flag, port string
}

var (
	fleetAPI  = api{"Fleet API", "flwr.proto.Fleet", "client apps (SuperNodes)", "--grpc-rere-fleet-api-address", "9092"}
	driverAPI = api{"Driver API", "flwr.proto.Driver", "server apps", "--driver-api-address", "9091"}
)

// ErrWrongAPI is matched (errors.Is) by the error RunNode, RunFedAvg and
// StopNodes return when the server at the address does not serve the API
// they need (a client app pointed at the Driver API port, a server app at
// the Fleet API port). It is never retried.
var ErrWrongAPI = errors.New("wrong SuperLink API")

// wrongAPIError is ErrWrongAPI with the words for the user.
type wrongAPIError struct{ msg string }

func (e *wrongAPIError) Error() string { return e.msg }
func (e *wrongAPIError) Is(target error) bool {
	return target == ErrWrongAPI
}

// wrongAPI turns err, the failure of the first call to addr, into an error
// that says which API is at addr and where to connect instead, when err is
// the Unimplemented "unknown service" answer of a gRPC server without the
// API want; otherwise it returns nil. It asks the server once whether it
// serves the other API (a call without effect: GetNodes of run 0, or a
// Ping of node 0), so that it can say which port it is.
func wrongAPI(ctx context.Context, conn grpc.ClientConnInterface, addr string, want api, err error) error {
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return nil
	}
	st := gs.GRPCStatus()
	if st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "unknown service "+want.service) {
		return nil
	}
	other := driverAPI
	if want == driverAPI {
		other = fleetAPI
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var perr error
	if other == driverAPI {
		_, perr = pb.NewDriverClient(conn).GetNodes(pctx, &pb.GetNodesRequest{RunId: 0})
	} else {
		_, perr = pb.NewFleetClient(conn).Ping(pctx, &pb.PingRequest{Node: &pb.Node{NodeId: 0}, PingInterval: 30})
	}
	host, _, _ := net.SplitHostPort(addr)
	instead := net.JoinHostPort(host, want.port)
	where := fmt.Sprintf("%s connect to the SuperLink's %s: the port of flower-superlink's %s (default %s), such as --server %s",
		capitalize(want.who), want.name, want.flag, want.port, instead)
	switch status.Code(perr) {
	case codes.Unimplemented, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		// Not that API either, or no answer: say what we know.
	default:
		return &wrongAPIError{fmt.Sprintf("%s is the SuperLink's %s, where %s connect, not its %s. %s",
			addr, other.name, other.who, want.name, where)}
	}
	return &wrongAPIError{fmt.Sprintf("%s does not serve the SuperLink's %s (it answered: %s); is it a SuperLink? %s",
		addr, want.name, st.Message(), where)}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
