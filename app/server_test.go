package app

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/transport"
)

func TestFedAvgWeights(t *testing.T) {
	global := []Array{Float32s([]float32{0, 0}), Int64s([]int64{0})}
	results := []FitRes{
		{Parameters: []Array{Float32s([]float32{1, 2}), Int64s([]int64{10})}, NumExamples: 30, Metrics: Config{"loss": 2.0}},
		{Parameters: []Array{Float32s([]float32{5, 6}), Int64s([]int64{20})}, NumExamples: 10, Metrics: Config{"loss": 6.0}},
		{Parameters: []Array{Float32s([]float32{100, 100}), Int64s([]int64{0})}, NumExamples: 0},
	}
	out, loss, err := fedAvg(global, results)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := out[0].Float32s()
	if !reflect.DeepEqual(w, []float32{2, 3}) {
		t.Errorf("weighted mean = %v, want [2 3] (30:10, the 0-example result ignored)", w)
	}
	i, _ := out[1].Values()
	if i[0] != 13 || out[1].DType != "int64" {
		t.Errorf("int64 mean = %v %s, want 12.5 rounded to 13, int64", i, out[1].DType)
	}
	if loss != 3 {
		t.Errorf("train loss = %v, want (2*30+6*10)/40 = 3", loss)
	}
	_, loss, _ = fedAvg(global, []FitRes{{Parameters: global, NumExamples: 1}})
	if !math.IsNaN(loss) {
		t.Errorf("loss without a loss metric = %v, want NaN", loss)
	}
	for _, bad := range [][]Array{{Float32s([]float32{1, 2})}, {Float64s([]float64{1, 2}), Int64s([]int64{0})}, {Float32s([]float32{1, 2, 3}), Int64s([]int64{0})}} {
		if _, _, err := fedAvg(global, []FitRes{{Parameters: bad, NumExamples: 1}}); err == nil {
			t.Errorf("mismatched result %v accepted", bad)
		}
	}
}

// fleetClient dials link's Fleet API over TLS; the connection is closed
// when the test ends.
func fleetClient(t *testing.T, link testLink) pb.FleetClient {
	t.Helper()
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: link.caFile})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(link.fleet, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewFleetClient(conn)
}

// fakeNode registers a node that never asks for tasks.
func fakeNode(t *testing.T, link testLink, pingInterval float64) int64 {
	t.Helper()
	resp, err := fleetClient(t, link).CreateNode(context.Background(), &pb.CreateNodeRequest{PingInterval: pingInterval})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetNode().GetNodeId()
}

// ghostNode registers a node with a ping interval of 1 s that answers
// tasks until it gets a train task, then vanishes: no answer, no more pings.
func ghostNode(t *testing.T, link testLink) int64 {
	t.Helper()
	fleet := fleetClient(t, link)
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fleet.CreateNode(ctx, &pb.CreateNodeRequest{PingInterval: 1})
	if err != nil {
		t.Fatal(err)
	}
	self := resp.GetNode()
	done := make(chan struct{})
	t.Cleanup(func() { // runs before fleetClient's, registered earlier
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		app := NewDemoClient(self.GetNodeId())
		for ctx.Err() == nil {
			fleet.Ping(ctx, &pb.PingRequest{Node: self, PingInterval: 1})
			r, err := fleet.PullTaskIns(ctx, &pb.PullTaskInsRequest{Node: self})
			if err == nil && len(r.GetTaskInsList()) > 0 {
				ins := r.GetTaskInsList()[0]
				if ins.GetTask().GetTaskType() == TaskTrain {
					return
				}
				rep := handleTask(ctx, app, self.GetNodeId(), ins, time.Now)
				fleet.PushTaskRes(ctx, &pb.PushTaskResRequest{TaskResList: []*pb.TaskRes{rep.res}})
			}
			sleep(ctx, 50*time.Millisecond)
		}
	}()
	return self.GetNodeId()
}

// TestVanishedNodeIsDropped: a node that stops pinging mid-round is
// reported unavailable by the SuperLink and dropped from the round; the
// run goes on with the node that answers.
func TestVanishedNodeIsDropped(t *testing.T) {
	link := startLink(t)
	tlsOpts := transport.ClientOptions{RootCertificates: link.caFile}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runNode(ctx, t, link)
	ghost := ghostNode(t, link)
	var out bytes.Buffer
	sum, err := RunFedAvg(ctx, ServerOptions{Server: link.driver, TLS: tlsOpts, Rounds: 1, MinNodes: 2, Out: &out,
		PollInterval: 50 * time.Millisecond, NodesInterval: 50 * time.Millisecond, RoundTimeout: time.Minute, Logger: testLogger(t, "server")})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Rounds) != 1 || sum.Rounds[0].Nodes != 1 {
		t.Errorf("rounds %+v, want 1 round with 1 node (ghost %d dropped)", sum.Rounds, ghost)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RunNode: %v", err)
	}
}

// TestRoundTimeout: a node that is online but never answers ends the run
// after RoundTimeout with an error that says so.
func TestRoundTimeout(t *testing.T) {
	link := startLink(t)
	fakeNode(t, link, 30)
	_, err := RunFedAvg(context.Background(), ServerOptions{Server: link.driver, TLS: transport.ClientOptions{RootCertificates: link.caFile},
		MinNodes: 1, PollInterval: 50 * time.Millisecond, RoundTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") || !strings.Contains(err.Error(), "0 of 1 nodes answered") {
		t.Errorf("RunFedAvg = %v, want a timeout naming how many answered", err)
	}
}

func TestDemoClient(t *testing.T) {
	ctx := context.Background()
	a, b := NewDemoClient(42), NewDemoClient(42)
	p, _ := a.GetParameters(ctx, nil)
	ra, err := a.Fit(ctx, p, Config{"epochs": int64(2)})
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := b.Fit(ctx, p, Config{"epochs": int64(2)})
	if !reflect.DeepEqual(ra, rb) {
		t.Error("two demo clients of one node id trained differently")
	}
	rc, _ := NewDemoClient(43).Fit(ctx, p, nil)
	if reflect.DeepEqual(ra.Parameters, rc.Parameters) {
		t.Error("node ids 42 and 43 drew the same data")
	}
	e0, _ := a.Evaluate(ctx, p, nil)
	e1, _ := a.Evaluate(ctx, ra.Parameters, nil)
	if !(e1.Loss < e0.Loss/2) || e1.NumExamples != demoTestSize || e1.Metrics["mse"] != e1.Loss {
		t.Errorf("evaluate before %v after %+v: training did not help", e0.Loss, e1)
	}
	if _, err := a.Fit(ctx, p[:1], nil); err == nil {
		t.Error("Fit with one array accepted")
	}
}

func TestLookup(t *testing.T) {
	f, err := Lookup("client:app")
	if err != nil || f == nil {
		t.Fatalf("Lookup(client:app) = %v", err)
	}
	if _, ok := f(1).(*DemoClient); !ok {
		t.Error("client:app is not the demo client")
	}
	Register("test:app", func(int64) ClientApp { return goldenClient{} })
	if _, err := Lookup("test:app"); err != nil {
		t.Error(err)
	}
	_, err = Lookup("nope:app")
	if err == nil || !strings.Contains(err.Error(), `"nope:app"`) || !strings.Contains(err.Error(), "client:app, test:app") {
		t.Errorf("Lookup(nope) = %v, want the known refs listed", err)
	}
}

// badShapeClient is the demo client, except that Fit returns one array of
// the wrong shape and a negative example count on alternate calls.
type badShapeClient struct {
	ClientApp
	calls int
}

func (c *badShapeClient) Fit(ctx context.Context, p []Array, cfg Config) (FitRes, error) {
	c.calls++
	if c.calls%2 == 1 {
		return FitRes{Parameters: []Array{Float32s([]float32{1, 2, 3})}, NumExamples: 5}, nil
	}
	res, err := c.ClientApp.Fit(ctx, p, cfg)
	res.NumExamples = -1
	return res, err
}

// TestBadTrainReplyDropsOnlyThatNode: a node whose train reply cannot be
// averaged (other arrays than the model, a negative example count) is
// dropped from the round, as a node that answers with an error is; the run
// goes on with the others.
func TestBadTrainReplyDropsOnlyThatNode(t *testing.T) {
	link := startLink(t)
	tlsOpts := transport.ClientOptions{RootCertificates: link.caFile}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	good := runNode(ctx, t, link)
	bad := make(chan error, 1)
	go func() {
		bad <- RunNode(ctx, NodeOptions{Server: link.fleet, TLS: tlsOpts, PollInterval: 50 * time.Millisecond, Logger: testLogger(t, "bad node"),
			NewClient: func(id int64) ClientApp { return &badShapeClient{ClientApp: NewDemoClient(id)} }})
	}()
	var out bytes.Buffer
	sum, err := RunFedAvg(ctx, ServerOptions{Server: link.driver, TLS: tlsOpts, Rounds: 2, MinNodes: 2, Out: &out,
		PollInterval: 50 * time.Millisecond, NodesInterval: 50 * time.Millisecond, RoundTimeout: time.Minute, Logger: testLogger(t, "server")})
	if err != nil {
		t.Fatalf("one bad node ended the run: %v", err)
	}
	for _, r := range sum.Rounds {
		if r.Nodes != 1 {
			t.Errorf("round %d averaged %d nodes, want 1 (the bad one dropped)", r.Round, r.Nodes)
		}
	}
	cancel()
	for _, c := range []<-chan error{good, bad} {
		if err := <-c; err != nil {
			t.Errorf("RunNode: %v", err)
		}
	}
}

// TestRefusedCallMessage: a call the SuperLink refuses reads as the call,
// the code and the SuperLink's words, once each ("PushTaskIns failed with
// NotFound: task_ins_list[0]: ..."), and keeps its gRPC code.
func TestRefusedCallMessage(t *testing.T) {
	link := startLink(t)
	node := fakeNode(t, link, 30)
	ctx := context.Background()
	d, closeConn, err := newDriver(ctx, ServerOptions{Server: link.driver, TLS: transport.ClientOptions{RootCertificates: link.caFile}}.mustDefaults(t))
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	_, err = d.push(ctx, []*pb.TaskIns{newTaskIns(-7, node, "1", TaskTrain, &pb.RecordSet{}, time.Now())})
	want := "PushTaskIns failed with NotFound: task_ins_list[0]: run -7 does not exist: call CreateRun first"
	if err == nil || err.Error() != want {
		t.Errorf("push to run -7: %v\nwant: %s", err, want)
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("push to run -7: code %v, want NotFound", status.Code(err))
	}
}

// A server app waiting for nodes logs how many are online every
// NodesLogInterval, and gives up after NodesTimeout with a
// *TooFewNodesError.
func TestTooFewNodesGivesUp(t *testing.T) {
	link := startLink(t)
	fakeNode(t, link, 30)
	var log testkit.SyncBuffer
	start := time.Now()
	_, err := RunFedAvg(context.Background(), ServerOptions{Server: link.driver, TLS: transport.ClientOptions{RootCertificates: link.caFile},
		MinNodes: 2, NodesInterval: 50 * time.Millisecond, NodesTimeout: 700 * time.Millisecond, NodesLogInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	var tf *TooFewNodesError
	if !errors.As(err, &tf) || tf.Online != 1 || tf.Need != 2 || tf.Waited != 700*time.Millisecond {
		t.Fatalf("RunFedAvg = %v, want a *TooFewNodesError with 1 of 2 online", err)
	}
	if !strings.Contains(err.Error(), "only 1 of the 2 nodes needed were online after waiting 700ms") {
		t.Errorf("message: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v with a 700ms bound", d)
	}
	// Logged at the start and about every 200 ms after, though the count
	// did not change.
	if n := strings.Count(log.String(), `msg="waiting for nodes" online=1 need=2`); n < 3 {
		t.Errorf("logged the wait %d times, want at least 3 (every 200ms over 700ms):\n%s", n, log.String())
	}
}
