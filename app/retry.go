package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/transport"
)

// ErrGaveUp is wrapped by the error RunNode, RunFedAvg and StopNodes return
// when a network failure outlasted MaxRetries or MaxWaitTime.
var ErrGaveUp = errors.New("gave up")

// Backoff delays between retries: exponential from Base, doubled each
// retry up to Max, with "equal jitter" (each delay is drawn between half
// and all of its exponential value), within MaxRetries retries and
// MaxWaitTime since the first failure of a streak.
type backoff struct {
	Base, Max   time.Duration
	MaxRetries  int           // retries after the first failure; 0 = unlimited, < 0 = none
	MaxWaitTime time.Duration // since the first failure; 0 = unlimited, < 0 = none
	Rand        func() float64
}

const (
	defaultBackoffBase = 500 * time.Millisecond
	defaultBackoffMax  = 30 * time.Second
)

// streak counts the failures of one run of failed calls.
type streak struct {
	b     backoff
	tries int
	first time.Time
}

// next returns how long to wait before the next retry, or false when the
// limits are reached. now is the time of the failure.
func (s *streak) next(now time.Time) (time.Duration, bool) {
	if s.tries == 0 {
		s.first = now
	}
	s.tries++
	if s.b.MaxRetries < 0 || s.b.MaxWaitTime < 0 || s.b.MaxRetries > 0 && s.tries > s.b.MaxRetries {
		return 0, false
	}
	d := s.b.Base
	for i := 1; i < s.tries && d < s.b.Max; i++ {
		d *= 2
	}
	d = min(d, s.b.Max)
	r := 0.5
	if s.b.Rand != nil {
		r = s.b.Rand()
	}
	d = d/2 + time.Duration(float64(d/2)*r)
	if s.b.MaxWaitTime > 0 {
		left := s.b.MaxWaitTime - now.Sub(s.first)
		if left <= 0 {
			return 0, false
		}
		d = min(d, left)
	}
	return d, true
}

// caller makes RPCs to one address, retrying network failures with backoff
// and turning TLS verification failures into transport's one-line
// explanation at once.
type caller struct {
	addr string
	tls  transport.ClientOptions
	b    backoff
	log  *slog.Logger
	now  func() time.Time
}

// callTimeout bounds one small RPC, so that a server that accepts but never
// answers counts as a network failure. dataCallTimeout bounds the calls that
// may carry model parameters (up to 512 MiB): 100 MiB take 90 s at 10 Mbit/s,
// and a PullTaskIns cut short by its deadline loses its task for good (the
// SuperLink hands a TaskIns out once), so those get far longer. Variables
// for tests.
var (
	callTimeout     = 60 * time.Second
	dataCallTimeout = 30 * time.Minute
)

// timeoutFor returns the deadline of one call named what.
func timeoutFor(what string) time.Duration {
	switch what {
	case "PullTaskIns", "PushTaskRes", "PushTaskIns", "PullTaskRes":
		return dataCallTimeout
	}
	return callTimeout
}

// retryable reports whether a failed RPC may succeed if repeated.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}

// permanent wraps an error that must not be retried.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// do calls f until it succeeds, ctx ends (ctx.Err() is returned), f fails
// in a way that is not retryable (that error, worded by callError), a TLS
// failure shows (transport's explanation) or the backoff limits are reached
// (an error wrapping ErrGaveUp and the last failure).
func (c *caller) do(ctx context.Context, what string, f func(ctx context.Context) error) error {
	s := streak{b: c.b}
	for {
		cctx, cancel := context.WithTimeout(ctx, timeoutFor(what))
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p, ok := errors.AsType[permanent](err); ok {
			return p.err
		}
		if !retryable(err) {
			return callError(what, err)
		}
		if perr := c.classify(ctx, err); perr != nil {
			return perr
		}
		d, ok := s.next(c.now())
		if !ok {
			return fmt.Errorf("%w on %s to %s after %d retries in %s: %s", ErrGaveUp, what, c.addr,
				s.tries-1, c.now().Sub(s.first).Round(time.Millisecond), peerMessage(what, err))
		}
		c.log.Warn("call failed, retrying", "call", what, "server", c.addr, "error", status.Convert(err).Message(),
			"retry", s.tries, "retry_in", d.Round(time.Millisecond))
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// callError is the error of a call named what that failed in a way no
// retry changes. A gRPC status reads "PushTaskIns failed with NotFound:
// task_ins_list[0]: run -7 does not exist: call CreateRun first": the
// call, the code and the server's message, without repeating the call's
// name when the message starts with it (a Sepal SuperLink's do). Any
// other error is wrapped as "what: err". Both unwrap to err, so
// status.Code and errors.Is see through them.
func callError(what string, err error) error {
	if st, ok := status.FromError(err); ok {
		return &statusError{msg: fmt.Sprintf("%s failed with %s: %s", what, st.Code(), peerMessage(what, err)), err: err}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// statusError is a gRPC status error reworded for the user.
type statusError struct {
	msg string
	err error
}

func (e *statusError) Error() string { return e.msg }
func (e *statusError) Unwrap() error { return e.err }

// peerMessage is the message of err's gRPC status (err's text if it has
// none) without a leading "what: ", which would repeat the call's name.
func peerMessage(what string, err error) string {
	return strings.TrimPrefix(status.Convert(err).Message(), what+": ")
}

// classify decides whether a network-looking failure is a TLS failure that
// no retry can fix, asking transport (and, when the gRPC error does not
// tell, one TLS probe of the address). It returns the explanation, or nil.
func (c *caller) classify(ctx context.Context, err error) error {
	if transport.IsPermanent(err) {
		return transport.Explain(err, c.addr, c.tls)
	}
	if status.Code(err) != codes.Unavailable {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if perr := transport.Probe(pctx, c.addr, c.tls); perr != nil && transport.IsPermanent(perr) {
		return perr
	}
	return nil
}

// probe checks the address once (TLS handshake or plaintext), retrying
// network failures; a permanent TLS failure comes back at once.
func (c *caller) probe(ctx context.Context) error {
	return c.do(ctx, "connect", func(ctx context.Context) error {
		err := transport.Probe(ctx, c.addr, c.tls)
		if err == nil {
			return nil
		}
		if transport.IsPermanent(err) || unspecifiedTLS(c.addr, c.tls) {
			// TLS to 0.0.0.0 or :: cannot verify any certificate, so
			// waiting for a server there is pointless; transport's
			// message says what to pass instead.
			return permanent{transport.Explain(err, c.addr, c.tls)}
		}
		return status.Error(codes.Unavailable, err.Error())
	})
}

// unspecifiedTLS reports whether addr is 0.0.0.0 or :: dialled with TLS
// and no --tls-server-name: no certificate can match that name.
func unspecifiedTLS(addr string, o transport.ClientOptions) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || o.Insecure || o.ServerName != "" {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// maxMessageSize is the gRPC message limit of Flower 1.8.0, both ways.
const maxMessageSize = 512 << 20

// dial probes the address, then opens a gRPC client connection with the
// TLS (or, with Insecure, plaintext) credentials of o.
func dial(ctx context.Context, c *caller) (*grpc.ClientConn, error) {
	creds, err := transport.ClientCredentials(c.tls)
	if err != nil {
		return nil, err // a *transport.Error naming the option or file
	}
	if err := c.probe(ctx); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(c.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", c.addr, err)
	}
	return conn, nil
}

// sleep waits d or until ctx ends (returning ctx.Err()).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jitter returns d scaled by a random factor in [1-f, 1+f].
func jitter(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}
