package superlink

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// The single account and federation of Flower's open-source build (its
// no-op account plugin and federation manager).
const (
	NoopFederation            = "@none/default"
	noopFederationDescription = "A federation for testing and development purposes."
	noopFlwrAID               = "<id:none>"
	noopAccountName           = "none"
	// LogStreamInterval is how often StreamLogs looks for new output.
	LogStreamInterval = 500 * time.Millisecond
)

// control is Flower 1.29.0's Control API (the flwr command): runs, their
// logs, node keys, and the federation calls answered as Flower's no-op
// federation manager answers them.
type control struct {
	flwr129.UnimplementedControlServer
	s   state.LinkState
	log *slog.Logger
	now func() time.Time
	// g limits the node registrations of each peer; streams the log
	// streams open; runs the StartRun calls of each peer.
	g       *nodeGuard
	streams *streamSlots
	runs    *rateLimiter
	runRate Flower129Options

	logMu  sync.Mutex
	logged map[string]time.Time
	// stopping is closed when Serve begins to stop (nil: never).
	stopping <-chan struct{}
}

var errNoFederationManagement = status.Error(codes.Unimplemented, "SuperLink does not support federation management.")

func (c *control) nowISO() string {
	t := c.now().UTC()
	return t.Format("2006-01-02T15:04:05.000000+00:00")
}

// fabConfig is what StartRun reads of a FAB's pyproject.toml.
type fabConfig struct {
	Project struct {
		Name    string `toml:"name"`
		Version string `toml:"version"`
	} `toml:"project"`
	Tool struct {
		Flwr struct {
			App struct {
				Publisher string         `toml:"publisher"`
				Config    map[string]any `toml:"config"`
			} `toml:"app"`
		} `toml:"flwr"`
	} `toml:"tool"`
}

// readFab reads the pyproject.toml of a FAB (a zip).
func readFab(content []byte) (*fabConfig, error) {
	zr, err := zip.NewReader(bytes.NewReader(content), int64(len(content)))
	if err != nil {
		return nil, fmt.Errorf("the FAB is not a zip file: %w", err)
	}
	f, err := zr.Open("pyproject.toml")
	if err != nil {
		return nil, fmt.Errorf("the FAB has no pyproject.toml: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, state.FabMaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the FAB's pyproject.toml: %w", err)
	}
	var cfg fabConfig
	if _, err := toml.Decode(string(b), &cfg); err != nil {
		//lint:ignore ST1005 Flower's own words, which flwr users know
		return nil, fmt.Errorf("Invalid TOML content in pyproject.toml: %w", err)
	}
	if cfg.Project.Name == "" || cfg.Project.Version == "" || cfg.Tool.Flwr.App.Publisher == "" {
		return nil, fmt.Errorf("the FAB's pyproject.toml lacks [project] name or version, or [tool.flwr.app] publisher")
	}
	return &cfg, nil
}

// flatten lists the keys of a nested config as Flower flattens them
// ("a.b").
func flatten(m map[string]any, prefix string, out map[string]bool) {
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			flatten(sub, prefix+k+".", out)
			continue
		}
		out[prefix+k] = true
	}
}

func (c *control) StartRun(ctx context.Context, r *flwr129.StartRunRequest) (*flwr129.StartRunResponse, error) {
	if r.GetAppSpec() != "" {
		return nil, status.Error(codes.FailedPrecondition, "this SuperLink does not fetch apps from Flower Hub: run `flwr run` on the app's folder")
	}
	if err := c.startRunRate(ctx); err != nil {
		return nil, err
	}
	fab := r.GetFab()
	content := fab.GetContent()
	if len(content) > state.FabMaxSize {
		return nil, status.Errorf(codes.InvalidArgument, "the FAB is %d bytes; at most %d (10 MB) are taken", len(content), state.FabMaxSize)
	}
	sum := sha256.Sum256(content)
	hash := hex.EncodeToString(sum[:])
	if fab.GetHashStr() != "" && fab.GetHashStr() != hash {
		return nil, status.Errorf(codes.FailedPrecondition, "FAB (%.80s) hash from request doesn't match contents (%s)", fab.GetHashStr(), hash)
	}
	fed := r.GetFederation()
	if fed == "" {
		fed = NoopFederation
	}
	if fed != NoopFederation {
		return nil, status.Error(codes.NotFound, "Federation not found, archived, or you cannot perform this action.")
	}
	cfg, err := readFab(content)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	keys := map[string]bool{}
	flatten(cfg.Tool.Flwr.App.Config, "", keys)
	for k := range r.GetOverrideConfig() {
		if !keys[k] {
			return nil, status.Errorf(codes.FailedPrecondition, "Key '%s' is not present in the main dictionary", k)
		}
	}
	id, err := c.s.CreateLinkRun(ctx, state.NewRun{
		FabID:          cfg.Tool.Flwr.App.Publisher + "/" + cfg.Project.Name,
		FabVersion:     cfg.Project.Version,
		Fab:            &flwr129.Fab{HashStr: hash, Content: content, Verifications: fab.GetVerifications()},
		OverrideConfig: r.GetOverrideConfig(),
		Federation:     fed,
		FlwrAID:        noopFlwrAID,
		RunType:        "serverapp",
	})
	if err != nil {
		c.stateLimit(ctx, err)
		return nil, err
	}
	return &flwr129.StartRunResponse{RunId: &id}, nil
}

// StreamLogs sends a run's log as it grows, LogChunk at a time, until
// the run is finished, or its client has read nothing for LogSendTimeout;
// within Flower129Options' bounds on the streams open.
func (c *control) StreamLogs(r *flwr129.StreamLogsRequest, stream grpc.ServerStreamingServer[flwr129.StreamLogsResponse]) error {
	ctx := stream.Context()
	release, err := c.streams.take(peerKey(ctx))
	if err != nil {
		c.logRefusal(ctx, "max_log_streams", err)
		return err
	}
	defer release()
	if _, err := c.s.Run(ctx, r.GetRunId()); status.Code(err) == codes.NotFound {
		return status.Error(codes.NotFound, "Run ID not found")
	} else if err != nil {
		return err
	}
	after := r.GetAfterTimestamp() + 1e-6
	t := time.NewTicker(LogStreamInterval)
	defer t.Stop()
	for {
		text, latest, finished, err := c.s.Logs(ctx, r.GetRunId(), after, LogChunk)
		if err != nil {
			return err
		}
		if text != "" {
			if err := sendWithin(stream, &flwr129.StreamLogsResponse{LogOutput: text, LatestTimestamp: latest}, LogSendTimeout); err != nil {
				return err
			}
			after = max(latest, after) // Logs returns what follows it
			if !finished {
				continue // more may wait: no pause between chunks
			}
		}
		if finished {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-c.stopping:
			// flwr reconnects after DEADLINE_EXCEEDED (the end of its
			// own refresh period) and fails on any other code.
			return status.Error(codes.DeadlineExceeded, "the SuperLink is stopping: reconnect to follow the logs")
		case <-t.C:
		}
	}
}

// sendWithin sends m on stream, or gives up after d: a client that reads
// nothing holds its stream's handler in Send once the flow-control window
// is full. The handler then returns, which ends the stream and with it
// the Send left waiting.
func sendWithin[T any](stream grpc.ServerStreamingServer[T], m *T, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- stream.Send(m) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return status.Errorf(codes.DeadlineExceeded, "the client read nothing of its stream for %v: this SuperLink ends it", d)
	}
}

func (c *control) ListRuns(ctx context.Context, r *flwr129.ListRunsRequest) (*flwr129.ListRunsResponse, error) {
	var runs []*flwr129.Run
	if r.RunId != nil {
		run, err := c.s.Run(ctx, r.GetRunId())
		if status.Code(err) == codes.NotFound {
			return nil, status.Error(codes.NotFound, "Run ID not found")
		}
		if err != nil {
			return nil, err
		}
		runs = []*flwr129.Run{run}
	} else {
		limit := 0
		if r.Limit != nil {
			limit = int(min(r.GetLimit(), 1<<30))
		}
		var err error
		if runs, err = c.s.LinkRuns(ctx, limit); err != nil {
			return nil, err
		}
	}
	res := &flwr129.ListRunsResponse{RunDict: map[uint64]*flwr129.Run{}, Now: c.nowISO()}
	for _, run := range runs {
		res.RunDict[run.GetRunId()] = run
	}
	return res, nil
}

func (c *control) StopRun(ctx context.Context, r *flwr129.StopRunRequest) (*flwr129.StopRunResponse, error) {
	ok, err := c.s.StopRun(ctx, r.GetRunId())
	if status.Code(err) == codes.NotFound {
		return nil, status.Error(codes.NotFound, "Run ID not found")
	}
	if err != nil {
		return nil, err
	}
	return &flwr129.StopRunResponse{Success: ok}, nil
}

func (c *control) GetLoginDetails(context.Context, *flwr129.GetLoginDetailsRequest) (*flwr129.GetLoginDetailsResponse, error) {
	return &flwr129.GetLoginDetailsResponse{AuthnType: "noop"}, nil
}

func (c *control) GetAuthTokens(context.Context, *flwr129.GetAuthTokensRequest) (*flwr129.GetAuthTokensResponse, error) {
	return nil, status.Error(codes.Unimplemented, "NoOp plugin does not support getting auth tokens.")
}

func (c *control) PullArtifacts(context.Context, *flwr129.PullArtifactsRequest) (*flwr129.PullArtifactsResponse, error) {
	return nil, status.Error(codes.Unimplemented, "ControlServicer initialized without artifact provider")
}

func (c *control) RegisterNode(ctx context.Context, r *flwr129.RegisterNodeRequest) (*flwr129.RegisterNodeResponse, error) {
	if err := c.g.rate(ctx, "RegisterNode"); err != nil {
		return nil, err
	}
	if _, err := parseNodeKey(r.GetPublicKey()); err != nil {
		return nil, status.Error(codes.FailedPrecondition, "The provided public key is not valid")
	}
	id, err := c.s.RegisterNode(ctx, r.GetPublicKey(), state.HeartbeatDefaultInterval)
	if err != nil {
		c.g.stateRefusal(ctx, err)
		return nil, err
	}
	return &flwr129.RegisterNodeResponse{NodeId: &id}, nil
}

func (c *control) UnregisterNode(ctx context.Context, r *flwr129.UnregisterNodeRequest) (*flwr129.UnregisterNodeResponse, error) {
	if err := c.s.UnregisterNode(ctx, r.GetNodeId()); err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, status.Error(codes.NotFound, "Node ID not found for account")
		}
		return nil, err
	}
	return &flwr129.UnregisterNodeResponse{}, nil
}

func (c *control) ListNodes(ctx context.Context, _ *flwr129.ListNodesRequest) (*flwr129.ListNodesResponse, error) {
	nodes, err := c.s.LinkNodes(ctx)
	if err != nil {
		return nil, err
	}
	return &flwr129.ListNodesResponse{NodesInfo: nodes, Now: c.nowISO()}, nil
}

func noopFederation() *flwr129.Federation {
	return &flwr129.Federation{Name: NoopFederation, Description: noopFederationDescription}
}

func (c *control) ListFederations(context.Context, *flwr129.ListFederationsRequest) (*flwr129.ListFederationsResponse, error) {
	return &flwr129.ListFederationsResponse{Federations: []*flwr129.Federation{noopFederation()}}, nil
}

func (c *control) ShowFederation(ctx context.Context, r *flwr129.ShowFederationRequest) (*flwr129.ShowFederationResponse, error) {
	if r.GetFederationName() != NoopFederation {
		return nil, status.Errorf(codes.FailedPrecondition, "Federation '%.80s' does not exist or you are not a member of it.", r.GetFederationName())
	}
	nodes, err := c.s.LinkNodes(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := c.s.LinkRuns(ctx, 0)
	if err != nil {
		return nil, err
	}
	f := noopFederation()
	f.Members = []*flwr129.Member{{Account: &flwr129.Account{Id: noopFlwrAID, Name: noopAccountName}, Role: "owner"}}
	f.Nodes, f.Runs = nodes, runs
	return &flwr129.ShowFederationResponse{Federation: f, Now: c.nowISO()}, nil
}

// federationExists answers, as Flower does, a call that names a federation
// other than the one there is.
func federationExists(name string) error {
	if name == "" {
		return status.Error(codes.FailedPrecondition, "No federation specified. You must specify a federation to perform this action.")
	}
	if name != NoopFederation {
		return status.Errorf(codes.FailedPrecondition, "Federation '%.80s' does not exist", name)
	}
	return nil
}

func (c *control) CreateFederation(_ context.Context, r *flwr129.CreateFederationRequest) (*flwr129.CreateFederationResponse, error) {
	if r.GetFederationName() == "" {
		return nil, status.Error(codes.FailedPrecondition, "No federation specified. You must specify a federation to perform this action.")
	}
	return nil, errNoFederationManagement
}

func (c *control) ArchiveFederation(_ context.Context, r *flwr129.ArchiveFederationRequest) (*flwr129.ArchiveFederationResponse, error) {
	if r.GetFederationName() == "" {
		return nil, status.Error(codes.FailedPrecondition, "No federation specified. You must specify a federation to perform this action.")
	}
	return nil, errNoFederationManagement
}

func (c *control) AddNodeToFederation(ctx context.Context, r *flwr129.AddNodeToFederationRequest) (*flwr129.AddNodeToFederationResponse, error) {
	if err := c.ownNode(ctx, r.GetFederationName(), r.GetNodeId()); err != nil {
		return nil, err
	}
	return nil, errNoFederationManagement
}

func (c *control) RemoveNodeFromFederation(ctx context.Context, r *flwr129.RemoveNodeFromFederationRequest) (*flwr129.RemoveNodeFromFederationResponse, error) {
	if err := c.ownNode(ctx, r.GetFederationName(), r.GetNodeId()); err != nil {
		return nil, err
	}
	return nil, errNoFederationManagement
}

// ownNode is Flower's check before a federation's nodes change: the
// federation exists and the node is the account's.
func (c *control) ownNode(ctx context.Context, fed string, node uint64) error {
	if err := federationExists(fed); err != nil {
		return err
	}
	nodes, err := c.s.LinkNodes(ctx)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(nodes, func(n *flwr129.NodeInfo) bool { return n.GetNodeId() == node }) {
		return status.Errorf(codes.FailedPrecondition, "Node %d not found or you are not its owner.", node)
	}
	return nil
}

func (c *control) RemoveAccountFromFederation(context.Context, *flwr129.RemoveAccountFromFederationRequest) (*flwr129.RemoveAccountFromFederationResponse, error) {
	return nil, errNoFederationManagement
}

func (c *control) CreateInvitation(_ context.Context, r *flwr129.CreateInvitationRequest) (*flwr129.CreateInvitationResponse, error) {
	if r.GetFederationName() != NoopFederation {
		return nil, status.Error(codes.NotFound, "Federation not found, archived, or you cannot perform this action.")
	}
	return nil, errNoFederationManagement
}

func (c *control) ListInvitations(context.Context, *flwr129.ListInvitationsRequest) (*flwr129.ListInvitationsResponse, error) {
	return nil, errNoFederationManagement
}

func (c *control) AcceptInvitation(_ context.Context, r *flwr129.AcceptInvitationRequest) (*flwr129.AcceptInvitationResponse, error) {
	if r.GetFederationName() != NoopFederation {
		return nil, status.Error(codes.NotFound, "Federation not found, archived, or you cannot perform this action.")
	}
	return nil, errNoFederationManagement
}

func (c *control) RejectInvitation(context.Context, *flwr129.RejectInvitationRequest) (*flwr129.RejectInvitationResponse, error) {
	return nil, errNoFederationManagement
}

func (c *control) RevokeInvitation(context.Context, *flwr129.RevokeInvitationRequest) (*flwr129.RevokeInvitationResponse, error) {
	return nil, errNoFederationManagement
}

func (c *control) ConfigureSimulationFederation(_ context.Context, r *flwr129.ConfigureSimulationFederationRequest) (*flwr129.ConfigureSimulationFederationResponse, error) {
	// The no-op federation is not a simulation federation: Flower answers
	// FEDERATION_NOT_FOUND_OR_NO_PERMISSION for it too.
	return nil, status.Error(codes.NotFound, "Federation not found, archived, or you cannot perform this action.")
}

func (c *control) StreamRunEvents(*flwr129.StreamRunEventsRequest, grpc.ServerStreamingServer[flwr129.StreamRunEventsResponse]) error {
	return status.Error(codes.Unimplemented, "StreamRunEvents is not implemented (nor in Flower 1.29.0)")
}
