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

// The two APIs of a SuperLink, with the default port of each.
type api struct {
	name, service, who, port string
}

var (
	fleetAPI  = api{"Fleet API", "flwr.proto.Fleet", "client apps (SuperNodes)", "9092"}
	driverAPI = api{"Driver API", "flwr.proto.Driver", "server apps", "9091"}
)

// ErrWrongAPI is matched (errors.Is) by the error RunNode, RunFedAvg and
// StopNodes return when the server at the address does not serve the API
// they need (a client app pointed at the Driver API port, a server app at
// the Fleet API port), a *WrongAPIError. It is never retried.
var ErrWrongAPI = errors.New("wrong SuperLink API")

// WrongAPIError says that the server at Addr does not serve the API the
// caller needs, which API it serves instead when it told, and where to
// connect instead. It matches ErrWrongAPI.
type WrongAPIError struct {
	// Addr is the address dialled (NodeOptions.Server or
	// ServerOptions.Server).
	Addr string
	// Want is the API needed: "Fleet API" (RunNode) or "Driver API"
	// (RunFedAvg, StopNodes).
	Want string
	// Found is the API Addr serves instead (the other one), or "" when it
	// serves neither or did not say.
	Found string
	// Answer is what the server answered the call of Want, when Found is "".
	Answer string
	// Instead is where Want usually listens: the host of Addr with the
	// default port of Want (9092 for the Fleet API, 9091 for the Driver
	// API).
	Instead string
}

func (e *WrongAPIError) Error() string {
	want, found := apiNamed(e.Want), apiNamed(e.Found)
	where := fmt.Sprintf("%s connect to the SuperLink's %s (port %s by default), such as %s",
		capitalize(want.who), want.name, want.port, e.Instead)
	if e.Found != "" {
		return fmt.Sprintf("%s is the SuperLink's %s, where %s connect, not its %s. %s",
			e.Addr, found.name, found.who, want.name, where)
	}
	return fmt.Sprintf("%s does not serve the SuperLink's %s (it answered: %s); is it a SuperLink? %s",
		e.Addr, want.name, e.Answer, where)
}

// Is reports whether target is ErrWrongAPI.
func (e *WrongAPIError) Is(target error) bool { return target == ErrWrongAPI }

// apiNamed returns the API of that name.
func apiNamed(name string) api {
	if name == driverAPI.name {
		return driverAPI
	}
	return fleetAPI
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
	e := &WrongAPIError{Addr: addr, Want: want.name, Instead: net.JoinHostPort(host, want.port)}
	switch status.Code(perr) {
	case codes.Unimplemented, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		// Not that API either, or no answer: say what we know.
		e.Answer = st.Message()
	default:
		e.Found = other.name
	}
	return e
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
