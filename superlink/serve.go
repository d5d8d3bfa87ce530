package superlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
)

// Listeners are what ServeAll serves: a listener per API (nil: that API
// is not served) and the transport credentials of each (nil: plaintext).
//
// Fleet carries both generations' Fleet methods (Flower 1.8.0's
// CreateNode ... PushTaskRes and 1.29.0's RegisterNode ...: one service,
// flwr.proto.Fleet, whose method names do not collide). Driver is the
// 1.8.0 ServerApps' API; ServerAppIo the 1.29.0 SuperExec and ServerApp
// processes' API, always plaintext since Flower's processes speak no TLS
// there; it may be the Driver listener itself, as both default to port
// 9091: TLS connections there go to the Driver API and
// plaintext ones, from the peers ServerAppIoPeers allows, to ServerAppIo.
// Control is the flwr command's API, usually with the Fleet API's
// credentials.
type Listeners struct {
	Fleet, Driver, ServerAppIo, Control   net.Listener
	FleetCreds, DriverCreds, ControlCreds credentials.TransportCredentials
	// ServerAppIoPeers says which peers may speak plaintext ServerAppIo
	// on a listener shared with the Driver API. Default: Loopback.
	ServerAppIoPeers func(net.Addr) bool
}

// flower129 is the 1.29.0 generation of a SuperLink.
type flower129 struct {
	state     state.LinkState
	fleet     *fleet129
	appIo     *serverAppIo
	control   *control
	fleetDesc grpc.ServiceDesc
}

// Flower129Options configure the Flower 1.29.0 generation.
type Flower129Options struct {
	// State keeps the 1.29.0 nodes, runs, messages and objects. Default:
	// Options.State when it is a state.LinkState too; without either,
	// Flower 1.29.0 is not served (Serve refuses ServerAppIo and Control
	// listeners).
	State state.LinkState
	// KeysOnly closes RegisterNode and UnregisterNode of the Fleet API to
	// the nodes themselves: only keys registered through the Control API
	// (`flwr supernode register`) may join, as Flower's
	// --enable-supernode-auth. Default: false.
	KeysOnly bool
	// MaxLogStreams bounds the StreamLogs calls open at once (flwr log,
	// flwr run --stream), and MaxLogStreamsPerPeer those of one peer;
	// more are refused with ResourceExhausted. Defaults
	// DefaultMaxLogStreams (128) and DefaultMaxLogStreamsPerPeer (8).
	MaxLogStreams, MaxLogStreamsPerPeer int
	// RunRate and RunBurst limit the StartRun calls of one peer as a
	// token bucket: RunBurst at once, then RunRate a second; more are
	// refused with ResourceExhausted. Defaults DefaultRunRate (0.2) and
	// DefaultRunBurst (20).
	RunRate  float64
	RunBurst int
}

// bothFleets serves both generations' Fleet methods.
type bothFleets struct {
	flwrproto.FleetServer
	fleet129Server
}

type fleet129Server = flwr129.FleetServer

func newFlower129(o Options, g *nodeGuard) *flower129 {
	ls := o.Flower129.State
	if ls == nil {
		l, ok := o.State.(state.LinkState)
		if !ok {
			return nil // Flower 1.29.0 is not served
		}
		ls = l
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	f := &flower129{state: ls}
	f.fleet = &fleet129{s: ls, auth: nodeAuth{s: ls, now: now}, log: o.Logger, keysOnly: o.Flower129.KeysOnly, g: g}
	f.appIo = &serverAppIo{s: ls, log: o.Logger}
	f.control = newControl(ls, o, g)
	f.fleetDesc = flwr129.FlowerService(&flwr129.Fleet_ServiceDesc)
	f.fleetDesc.Methods = append(slices.Clone(flwrproto.Fleet_ServiceDesc.Methods), f.fleetDesc.Methods...)
	f.fleetDesc.HandlerType = (*interface {
		flwrproto.FleetServer
		flwr129.FleetServer
	})(nil)
	return f
}

// LinkState returns the state of the Flower 1.29.0 generation, for
// metrics and the status page; nil when it is not served.
func (s *SuperLink) LinkState() state.LinkState {
	if s.flower == nil {
		return nil
	}
	return s.flower.state
}

// registerFleet registers the Fleet service of both generations on srv
// (of Flower 1.8.0 only, when 1.29.0 is not served).
func (s *SuperLink) registerFleet(srv *grpc.Server) {
	if s.flower == nil {
		flwrproto.RegisterFleetServer(srv, s.Fleet())
		return
	}
	srv.RegisterService(&s.flower.fleetDesc, bothFleets{s.Fleet(), s.flower.fleet})
}

// api is one gRPC server of ServeAll.
type api struct {
	name     string
	lis      net.Listener
	creds    credentials.TransportCredentials
	register func(*grpc.Server)
	services []string // names health reports SERVING
	limited  bool     // lis is already under a limitListener
	opts     []grpc.ServerOption
}

// Serve serves every API of l that has a listener, each with the
// standard gRPC health service (grpc.health.v1.Health, SERVING for "" and
// the API's services; NOT_SERVING while small requests are refused for
// want of budget), under Options.Limits, all sharing one wire layer: its
// guard, in-flight budget and view of each peer. Every call on a
// connection whose AuthInfo can Recheck() its client certificate is
// refused with Unauthenticated once that fails (the certificate was
// revoked, or its CA dropped, while the connection was open).
//
// It blocks until ctx ends, then stops gracefully: health turns
// NOT_SERVING; no connection is taken off a listener's queue any more
// (those queued stay there, for whoever serves the socket next when it
// outlives this process, as under systemd socket activation), and those
// already taken still reach gRPC; every connection is sent GOAWAY, so
// that clients make new calls on a new connection; the calls in flight
// get ShutdownGrace (from the end of ctx) to finish, Control API log
// streams end at once (DEADLINE_EXCEEDED, which flwr takes as the end of
// its own refresh period, and reconnects); then connections still open
// are cut. It closes every listener (this process's descriptor of it),
// and returns nil after ctx ends, the error of a listener that failed, or
// at once an error naming a limit out of range or an API it cannot serve.
func (s *SuperLink) Serve(ctx context.Context, l Listeners) error {
	if s.flower == nil && (l.ServerAppIo != nil || l.Control != nil) {
		for _, lis := range []net.Listener{l.Fleet, l.Driver, l.ServerAppIo, l.Control} {
			if lis != nil {
				lis.Close()
			}
		}
		return errors.New("the ServerAppIo and Control APIs (Flower 1.29.0) need a state that is a state.LinkState too")
	}
	f129 := flwr129.FlowerService(&flwr129.ServerAppIo_ServiceDesc)
	ctl := flwr129.FlowerService(&flwr129.Control_ServiceDesc)
	appIo, control := any(nil), any(nil)
	if s.flower != nil {
		appIo, control = s.flower.appIo, s.flower.control
	}
	// Each socket under a gate (see drain.go), below everything else.
	shared := l.ServerAppIo != nil && l.ServerAppIo == l.Driver
	var gs gates
	l.Fleet, l.Driver, l.Control = gs.wrap(l.Fleet), gs.wrap(l.Driver), gs.wrap(l.Control)
	if shared {
		l.ServerAppIo = l.Driver
	} else {
		l.ServerAppIo = gs.wrap(l.ServerAppIo)
	}
	all := []api{
		{"Fleet API", l.Fleet, l.FleetCreds, s.registerFleet, []string{flwrproto.Fleet_ServiceDesc.ServiceName}, false, nil},
		{"Driver API", l.Driver, l.DriverCreds, func(g *grpc.Server) { flwrproto.RegisterDriverServer(g, s.Driver()) }, []string{flwrproto.Driver_ServiceDesc.ServiceName}, false, nil},
		{"ServerAppIo API", l.ServerAppIo, nil, func(g *grpc.Server) { g.RegisterService(&f129, appIo) }, []string{f129.ServiceName}, false, nil},
		{"Control API", l.Control, l.ControlCreds, func(g *grpc.Server) { g.RegisterService(&ctl, control) }, []string{ctl.ServiceName}, false, nil},
	}
	peers := l.ServerAppIoPeers
	if peers == nil {
		peers = wire.Loopback
	}
	switch {
	case l.ServerAppIo == nil || l.ServerAppIo != l.Driver:
		all[2].opts = peersOnly(f129.ServiceName, peers)
	case l.DriverCreds == nil || l.DriverCreds.Info().SecurityProtocol != "tls":
		// One plaintext port: one server carries both, ServerAppIo for
		// the peers allowed only.
		all[1].register = func(g *grpc.Server) {
			flwrproto.RegisterDriverServer(g, s.Driver())
			g.RegisterService(&f129, appIo)
		}
		all[1].services = append(all[1].services, f129.ServiceName)
		all[1].opts = peersOnly(f129.ServiceName, peers)
		all[2].lis = nil
	default:
		// One port, limited once, split by the first byte: TLS to the
		// Driver API, plaintext to ServerAppIo.
		if err := s.opts.Limits.Validate(); err != nil {
			l.Driver.Close()
			return err
		}
		all[1].lis, all[2].lis = s.wire.Split(s.wire.Listen(l.Driver), peers)
		all[1].limited, all[2].limited = true, true
	}
	var apis []api
	for _, a := range all {
		if a.lis != nil {
			apis = append(apis, a)
		}
	}
	return s.serve(ctx, apis, gs)
}

// serve is the lifecycle of Serve over apis, whose listeners are under gs.
func (s *SuperLink) serve(ctx context.Context, apis []api, gs gates) error {
	closeAll := func() {
		for _, a := range apis {
			a.lis.Close()
		}
	}
	if len(apis) == 0 {
		return errors.New("nothing to serve: no listener given")
	}
	if err := s.opts.Limits.Validate(); err != nil {
		closeAll()
		return err
	}
	type running struct {
		srv *grpc.Server
		h   *health.Server
	}
	var rs []running
	errc := make(chan error, len(apis))
	healths := map[*health.Server][]string{}
	for _, a := range apis {
		lis := a.lis
		if !a.limited {
			lis = s.wire.Listen(a.lis)
		}
		srv := grpc.NewServer(append(s.serverOptions(a.creds), a.opts...)...)
		a.register(srv)
		h := health.NewServer()
		for _, name := range a.services {
			h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
		}
		healthpb.RegisterHealthServer(srv, h)
		healths[h] = append([]string{""}, a.services...)
		rs = append(rs, running{srv, h})
		go func() {
			if err := srv.Serve(lis); err != nil {
				errc <- fmt.Errorf("serving the %s on %s: %w", a.name, lis.Addr(), err)
			}
		}()
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sweepDone := make(chan struct{})
	stallDone := make(chan struct{})
	go func() {
		defer close(stallDone)
		s.wire.Run(sctx)
	}()
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		s.watchPressure(sctx, healths)
	}()
	revokeDone := make(chan struct{})
	go func() {
		defer close(revokeDone)
		if s.opts.Revocations != nil {
			s.nodes.watchRevocations(sctx, s.state, s.opts.Revocations)
		}
	}()
	go func() {
		defer close(sweepDone)
		t := time.NewTicker(s.opts.SweepInterval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				if err := s.state.Sweep(sctx); err != nil && sctx.Err() == nil {
					s.log.Warn("sweep failed; it runs again at the next tick", "error", err)
				}
			}
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	began := time.Now()
	for _, r := range rs {
		r.h.Shutdown()
	}
	s.stopStreams()
	if !gs.stop() {
		s.log.Warn("stopping: connections taken off the queue did not reach gRPC within the settle time; they are closed", "settle", acceptSettle)
	}
	graceEnded := make(chan struct{})
	grace := time.AfterFunc(max(s.opts.ShutdownGrace-time.Since(began), 0), func() { close(graceEnded) })
	defer grace.Stop()
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan struct{})
			go func() { r.srv.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-graceEnded:
				s.log.Warn("stopping: calls still in flight after the shutdown grace are cut", "api", apis[i].name, "shutdown_grace", s.opts.ShutdownGrace)
				r.srv.Stop()
				<-done
			}
		}()
	}
	wg.Wait()
	cancel()
	<-sweepDone
	<-stallDone
	<-healthDone
	<-revokeDone
	return err
}

// peersOnly are server options that refuse calls of service from peers
// allowed refuses, with PermissionDenied: ServerAppIo runs every run's
// ServerApp and speaks plaintext, so it takes the peers the operator
// allows (loopback ones by default) whatever the listener's address.
func peersOnly(service string, allowed func(net.Addr) bool) []grpc.ServerOption {
	prefix := "/" + service + "/"
	check := func(ctx context.Context, method string) error {
		if !strings.HasPrefix(method, prefix) {
			return nil
		}
		if p, ok := peer.FromContext(ctx); ok && allowed(p.Addr) {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "%s takes calls from this machine only (loopback): it speaks plaintext and runs every run's ServerApp", service)
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}
