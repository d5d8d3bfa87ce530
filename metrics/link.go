package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink"
)

// LinkState is what the metrics and the status page read of the Flower
// 1.29.0 generation's state: observation methods of state.LinkState,
// which satisfies it. Each is called on every scrape or page view with a
// context that ends after a few seconds.
type LinkState interface {
	// LinkStats counts runs by status, messages and objects held.
	LinkStats(ctx context.Context) (state.LinkStats, error)
	// LinkNodes returns every node, in the order they registered, with its
	// status as of now.
	LinkNodes(ctx context.Context) ([]*flwr129.NodeInfo, error)
	// LinkRuns returns the most recent runs first, at most limit.
	LinkRuns(ctx context.Context, limit int, statuses ...string) ([]*flwr129.Run, error)
}

var _ LinkState = state.LinkState(nil)

// SetLinkState gives the Flower 1.29.0 state to read (SuperLink.LinkState),
// when it is made after New; it replaces Options.LinkState.
func (m *Metrics) SetLinkState(s LinkState) {
	if s == nil {
		m.linkState.Store(nil)
		return
	}
	m.linkState.Store(&s)
}

func (m *Metrics) getLinkState() LinkState {
	if p := m.linkState.Load(); p != nil {
		return *p
	}
	return nil
}

// The fixed label values of the Flower 1.29.0 metrics: Flower's node
// statuses and run statuses (state's constants), never anything a peer
// sends.
var (
	nodeStates129 = []string{state.NodeRegistered, state.NodeOnline, state.NodeOffline, state.NodeUnregistered}
	runStatuses   = []string{state.StatusPending, state.StatusStarting, state.StatusRunning, state.StatusFinished}
)

var (
	descNodes129 = prometheus.NewDesc("sepal_flower129_nodes",
		"Flower 1.29 SuperNodes, by state: registered (never joined), online (heartbeats on time), offline (missed them, or left), unregistered (gone for good).",
		[]string{"state"}, nil)
	descNodesLate = prometheus.NewDesc("sepal_flower129_nodes_heartbeat_late",
		"Flower 1.29 SuperNodes online whose last heartbeat is older than their heartbeat interval: they go offline unless the next one comes.", nil, nil)
	descRuns129 = prometheus.NewDesc("sepal_flower129_runs",
		"Flower 1.29 runs, by status (pending, starting, running, finished).", []string{"status"}, nil)
	descMessages129 = prometheus.NewDesc("sepal_flower129_messages",
		"Flower 1.29 messages held: instructions not yet answered and pulled, and their replies.", nil, nil)
	descObjects129 = prometheus.NewDesc("sepal_flower129_objects",
		"Flower 1.29 objects held (message contents and array chunks, each stored once by its SHA-256).", nil, nil)
	descObjectBytes129 = prometheus.NewDesc("sepal_flower129_object_bytes",
		"Total size of the Flower 1.29 objects held.", nil, nil)
)

var linkDescs = []*prometheus.Desc{descNodes129, descNodesLate, descRuns129, descMessages129, descObjects129, descObjectBytes129}

// collectLink exports the Flower 1.29.0 state, and reports whether it
// answered.
func (m *Metrics) collectLink(ctx context.Context, ls LinkState, gauge func(*prometheus.Desc, float64, ...string)) bool {
	st, err := ls.LinkStats(ctx)
	var nodes []*flwr129.NodeInfo
	if err == nil {
		nodes, err = ls.LinkNodes(ctx)
	}
	if err != nil {
		m.log.Debug("the Flower 1.29 state did not answer a scrape", "error", err)
		return false
	}
	now := m.o.Now()
	counts := map[string]int{}
	late := 0
	for _, n := range nodes {
		v := viewNode129(n, now)
		counts[v.Status]++
		if v.Late {
			late++
		}
	}
	for _, s := range nodeStates129 {
		gauge(descNodes129, float64(counts[s]), s)
	}
	gauge(descNodesLate, float64(late))
	for _, s := range runStatuses {
		gauge(descRuns129, float64(st.Runs[s]), s)
	}
	gauge(descMessages129, float64(st.Messages))
	gauge(descObjects129, float64(st.Objects))
	gauge(descObjectBytes129, float64(st.ObjectBytes))
	return true
}

// node129 is a Flower 1.29.0 node as the status page shows it.
type node129 struct {
	ID          uint64
	Status      string
	Fingerprint string
	// Interval is the heartbeat interval in seconds, 0 before the node
	// joined.
	Interval float64
	// LastHeartbeat is when the node last joined or sent a heartbeat, as
	// its online_until tells (patience intervals later); zero when it never
	// joined.
	LastHeartbeat time.Time
	// OnlineUntil is when an online node goes offline without a heartbeat.
	OnlineUntil time.Time
	// Late: online, and its last heartbeat older than its interval.
	Late       bool
	Registered time.Time
	// Left is when an offline node went offline, or an unregistered one
	// was unregistered; zero when unknown.
	Left time.Time
}

// viewNode129 reads a node's heartbeat state as of now.
func viewNode129(n *flwr129.NodeInfo, now time.Time) node129 {
	v := node129{ID: n.GetNodeId(), Status: n.GetStatus(), Fingerprint: superlink.KeyFingerprint(n.GetPublicKey()),
		Interval: n.GetHeartbeatInterval(), Registered: isoTime(n.GetRegisteredAt())}
	if n.OnlineUntil != nil && v.Interval > 0 {
		v.OnlineUntil = seconds(n.GetOnlineUntil())
		v.LastHeartbeat = v.OnlineUntil.Add(-time.Duration(state.HeartbeatPatience * v.Interval * float64(time.Second)))
	}
	switch v.Status {
	case state.NodeOnline:
		v.Late = !v.LastHeartbeat.IsZero() && now.Sub(v.LastHeartbeat) > time.Duration(v.Interval*float64(time.Second))
	case state.NodeOffline:
		v.Left = isoTime(n.GetLastDeactivatedAt())
	case state.NodeUnregistered:
		v.Left = isoTime(n.GetUnregisteredAt())
	}
	return v
}

// run129 is a Flower 1.29.0 run as the status page shows it.
type run129 struct {
	ID                   uint64
	App                  string // fab_id and fab_version, as flwr ls shows them
	Status, SubStatus    string
	Created, Running     time.Time
	Elapsed              time.Duration // running to finished (or now); 0 before it ran
	BytesSent, BytesRecv int64         // to and from the SuperNodes
	ClientAppRuntime     float64       // seconds, summed over the nodes
}

// StatusText is the status as flwr ls prints it: "running", or
// "finished:completed".
func (r run129) StatusText() string {
	if r.SubStatus != "" {
		return r.Status + ":" + r.SubStatus
	}
	return r.Status
}

// StatusClass is the page's colour of the status.
func (r run129) StatusClass() string {
	switch r.SubStatus {
	case state.SubStatusCompleted:
		return "ok"
	case state.SubStatusFailed:
		return "bad"
	case state.SubStatusStopped:
		return "warn"
	}
	return ""
}

func viewRun129(r *flwr129.Run, now time.Time) run129 {
	v := run129{ID: r.GetRunId(), App: r.GetFabId(), Status: r.GetStatus().GetStatus(), SubStatus: r.GetStatus().GetSubStatus(),
		Created: isoTime(r.GetPendingAt()), Running: isoTime(r.GetRunningAt()),
		BytesSent: int64(r.GetBytesSent()), BytesRecv: int64(r.GetBytesRecv()), ClientAppRuntime: r.GetClientappRuntime()}
	if r.GetFabVersion() != "" {
		v.App += " " + r.GetFabVersion()
	}
	if !v.Running.IsZero() {
		end := now
		if f := isoTime(r.GetFinishedAt()); !f.IsZero() {
			end = f
		}
		v.Elapsed = end.Sub(v.Running)
	}
	return v
}

// link129 is the Flower 1.29.0 part of the status page.
type link129 struct {
	Err    string
	Stats  state.LinkStats
	Counts map[string]int // nodes by status
	Nodes  []node129      // those not unregistered, up to Options.ListedNodes
	More   int            // not unregistered, not listed
	Runs   []run129
}

// page129 gathers the Flower 1.29.0 part of the status page.
func (m *Metrics) page129(ctx context.Context, ls LinkState, now time.Time) *link129 {
	l := &link129{Counts: map[string]int{}}
	st, err := ls.LinkStats(ctx)
	var nodes []*flwr129.NodeInfo
	var runs []*flwr129.Run
	if err == nil {
		nodes, err = ls.LinkNodes(ctx)
	}
	if err == nil {
		runs, err = ls.LinkRuns(ctx, m.o.RecentRuns)
	}
	if err != nil {
		l.Err = err.Error()
		return l
	}
	l.Stats = st
	for _, n := range nodes {
		v := viewNode129(n, now)
		l.Counts[v.Status]++
		if v.Status == state.NodeUnregistered {
			continue
		}
		if len(l.Nodes) < m.o.ListedNodes {
			l.Nodes = append(l.Nodes, v)
		} else {
			l.More++
		}
	}
	for _, r := range runs {
		l.Runs = append(l.Runs, viewRun129(r, now))
	}
	return l
}

// isoTime parses Flower's ISO 8601 times; zero when empty or malformed.
func isoTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// seconds is a time given as seconds since the epoch.
func seconds(s float64) time.Time { return time.Unix(0, int64(s*1e9)) }
