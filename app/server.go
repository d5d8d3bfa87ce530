package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/transport"
)

// ServerOptions configures RunFedAvg and StopNodes. The zero value of each
// field is its default.
type ServerOptions struct {
	// Server is the Driver API address, host:port. Required (the command's
	// default is 0.0.0.0:9091, as Flower 1.8.0).
	Server string
	// TLS: root certificates, server name, or Insecure for plaintext.
	// Without Insecure the app always uses TLS (system roots when no root
	// certificate file is given); it never falls back to plaintext.
	TLS transport.ClientOptions
	// Rounds is the number of FedAvg rounds (default 3).
	Rounds int
	// MinNodes is how many online nodes each round waits for (default 2).
	MinNodes int
	// FitConfig and EvaluateConfig are sent as fitins.config and
	// evaluateins.config (default empty, as Flower 1.8.0's FedAvg).
	FitConfig, EvaluateConfig Config
	// PollInterval is the wait between PullTaskRes calls (default 1s).
	PollInterval time.Duration
	// NodesInterval is the wait between GetNodes calls while too few nodes
	// are online (default 3s).
	NodesInterval time.Duration
	// NodesTimeout bounds each wait for MinNodes online nodes (before the
	// run and before each round); past it RunFedAvg returns a
	// *TooFewNodesError. Default DefaultNodesTimeout (24h, the wait of
	// Flower 1.8.0's client manager).
	NodesTimeout time.Duration
	// NodesLogInterval is how often a wait for nodes logs how many are
	// online, beside each change of that number (default 30s).
	NodesLogInterval time.Duration
	// RoundTimeout bounds the wait for the replies of one phase (train or
	// evaluate) of a round, and StopNodes' wait (default 5m). A node that
	// vanishes is dropped from the round as soon as the SuperLink reports it
	// unavailable (after its ping interval), so this is for SuperLinks
	// that never answer.
	RoundTimeout time.Duration
	// MaxRetries and MaxWaitTime bound the retries of a failing call
	// (network failures), as for NodeOptions: 0 means unlimited, negative
	// no retry.
	MaxRetries  int
	MaxWaitTime time.Duration
	// Logger receives the log (default: discard).
	Logger *slog.Logger
	// Out receives one line per round and the summary (default: discard).
	Out io.Writer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o ServerOptions) withDefaults() (ServerOptions, error) {
	if o.Server == "" {
		return o, errors.New("ServerOptions.Server is empty: give the SuperLink's Driver API address, such as 127.0.0.1:9091")
	}
	if o.Rounds < 0 || o.MinNodes < 0 {
		return o, errors.New("ServerOptions.Rounds and MinNodes must not be negative")
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.MinNodes == 0 {
		o.MinNodes = 2
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.NodesInterval <= 0 {
		o.NodesInterval = 3 * time.Second
	}
	if o.NodesTimeout <= 0 {
		o.NodesTimeout = DefaultNodesTimeout
	}
	if o.NodesLogInterval <= 0 {
		o.NodesLogInterval = 30 * time.Second
	}
	if o.RoundTimeout <= 0 {
		o.RoundTimeout = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// RoundResult is one FedAvg round.
type RoundResult struct {
	Round int
	// TrainLoss is the mean of the "loss" metric the nodes returned from
	// Fit, weighted by num_examples (NaN when no node returned one).
	TrainLoss float64
	// EvalLoss is the mean of the nodes' evaluate losses, weighted by
	// num_examples.
	EvalLoss float64
	// Nodes is how many nodes contributed to the round's average.
	Nodes    int
	Duration time.Duration
}

// Summary is a finished FedAvg run.
type Summary struct {
	RunID  int64
	Rounds []RoundResult
	// InitialLoss is the first round's TrainLoss: the nodes' loss while
	// training from the initial parameters (NaN without rounds).
	InitialLoss float64
	// FinalLoss is the last round's EvalLoss (NaN without rounds).
	FinalLoss  float64
	Parameters []Array // the final global model
	Duration   time.Duration
}

// driver is a ServerApp's view of the Driver API for one run.
type driver struct {
	o     ServerOptions
	c     *caller
	api   pb.DriverClient
	runID int64
}

func newDriver(ctx context.Context, o ServerOptions) (*driver, func(), error) {
	c := &caller{addr: o.Server, tls: o.TLS, log: o.Logger, now: o.Now, b: backoff{
		Base: defaultBackoffBase, Max: defaultBackoffMax, MaxRetries: o.MaxRetries, MaxWaitTime: o.MaxWaitTime, Rand: rand.Float64,
	}}
	conn, err := dial(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	d := &driver{o: o, c: c, api: pb.NewDriverClient(conn)}
	err = c.do(ctx, "CreateRun", func(ctx context.Context) error {
		resp, err := d.api.CreateRun(ctx, &pb.CreateRunRequest{})
		d.runID = resp.GetRunId()
		return err
	})
	if err != nil {
		if werr := wrongAPI(ctx, conn, o.Server, driverAPI, err); werr != nil && ctx.Err() == nil {
			err = werr
		}
		conn.Close()
		return nil, nil, err
	}
	o.Logger.Info("run created", "run_id", d.runID, "server", o.Server)
	return d, func() { conn.Close() }, nil
}

// newTaskIns builds a TaskIns as the Flower 1.8.0 ServerApp does.
func newTaskIns(runID, nodeID int64, group, taskType string, rs *pb.RecordSet, now time.Time) *pb.TaskIns {
	return &pb.TaskIns{
		GroupId: group,
		RunId:   runID,
		Task: &pb.Task{
			Producer:  &pb.Node{NodeId: 0, Anonymous: true},
			Consumer:  &pb.Node{NodeId: nodeID},
			CreatedAt: unixSeconds(now),
			Ttl:       3600,
			TaskType:  taskType,
			Recordset: rs,
		},
	}
}

// push sends TaskIns in one PushTaskIns call and returns their ids.
func (d *driver) push(ctx context.Context, list []*pb.TaskIns) ([]string, error) {
	var ids []string
	err := d.c.do(ctx, "PushTaskIns", func(ctx context.Context) error {
		resp, err := d.api.PushTaskIns(ctx, &pb.PushTaskInsRequest{TaskInsList: list})
		ids = resp.GetTaskIds()
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(ids) != len(list) || slices.Contains(ids, "") {
		return nil, fmt.Errorf("the SuperLink stored %d of %d tasks (run %d unknown to it?)", len(slices.DeleteFunc(slices.Clone(ids), func(s string) bool { return s == "" })), len(list), d.runID)
	}
	return ids, nil
}

// nodes returns the online nodes, waiting (GetNodes every NodesInterval)
// until at least need are online, ctx ends, or NodesTimeout passes (a
// *TooFewNodesError). While it waits it logs the number online when it
// changes and every NodesLogInterval.
func (d *driver) nodes(ctx context.Context, need int) ([]int64, error) {
	logged, lastLog := -1, time.Time{}
	start := d.o.Now()
	for {
		var ids []int64
		err := d.c.do(ctx, "GetNodes", func(ctx context.Context) error {
			resp, err := d.api.GetNodes(ctx, &pb.GetNodesRequest{RunId: d.runID})
			ids = ids[:0]
			for _, n := range resp.GetNodes() {
				ids = append(ids, n.GetNodeId())
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if len(ids) >= need {
			slices.Sort(ids)
			return ids, nil
		}
		now := d.o.Now()
		waited := now.Sub(start)
		if waited >= d.o.NodesTimeout {
			return nil, &TooFewNodesError{Online: len(ids), Need: need, Waited: d.o.NodesTimeout}
		}
		if logged != len(ids) || now.Sub(lastLog) >= d.o.NodesLogInterval {
			d.o.Logger.Info("waiting for nodes", "online", len(ids), "need", need,
				"waited", waited.Round(time.Second).String(), "gives_up_in", (d.o.NodesTimeout - waited).Round(time.Second).String())
			logged, lastLog = len(ids), now
		}
		if err := sleep(ctx, min(d.o.NodesInterval, d.o.NodesTimeout-waited)); err != nil {
			return nil, err
		}
	}
}

// DefaultNodesTimeout is ServerOptions.NodesTimeout's default: a day, as
// Flower 1.8.0's SimpleClientManager.wait_for.
const DefaultNodesTimeout = 24 * time.Hour

// TooFewNodesError is returned by RunFedAvg when fewer than MinNodes nodes
// were online after NodesTimeout.
type TooFewNodesError struct {
	Online, Need int           // nodes online at the end, nodes needed
	Waited       time.Duration // NodesTimeout
}

func (e *TooFewNodesError) Error() string {
	return fmt.Sprintf("only %d of the %d nodes needed were online after waiting %s", e.Online, e.Need, e.Waited)
}

// errTimeout is wrapped when replies did not come within RoundTimeout.
var errTimeout = errors.New("timed out")

// collect polls PullTaskRes every PollInterval until every TaskIns id has
// a TaskRes (an error TaskRes counts) or RoundTimeout passes; then it
// returns what came with an error wrapping errTimeout.
func (d *driver) collect(ctx context.Context, ids []string) (map[string]*pb.TaskRes, error) {
	got := make(map[string]*pb.TaskRes, len(ids))
	deadline := time.Now().Add(d.o.RoundTimeout)
	for {
		var want []string
		for _, id := range ids {
			if got[id] == nil {
				want = append(want, id)
			}
		}
		if len(want) == 0 {
			return got, nil
		}
		err := d.c.do(ctx, "PullTaskRes", func(ctx context.Context) error {
			resp, err := d.api.PullTaskRes(ctx, &pb.PullTaskResRequest{Node: &pb.Node{Anonymous: true}, TaskIds: want})
			for _, r := range resp.GetTaskResList() {
				if a := r.GetTask().GetAncestry(); len(a) > 0 && slices.Contains(want, a[0]) {
					got[a[0]] = r
				}
			}
			return err
		})
		if err != nil {
			return got, err
		}
		if len(got) == len(ids) {
			return got, nil
		}
		if !time.Now().Before(deadline) {
			return got, fmt.Errorf("%w after %s", errTimeout, d.o.RoundTimeout)
		}
		if err := sleep(ctx, min(d.o.PollInterval, time.Until(deadline))); err != nil {
			return got, err
		}
	}
}

// ask sends one task per node (one PushTaskIns each, as Flower 1.8.0) and
// collects the replies. It returns the successful replies by node, and
// logs and drops the nodes that answered with an error (such as
// NODE_UNAVAILABLE for a node that vanished).
func (d *driver) ask(ctx context.Context, nodes []int64, group, taskType string, rs *pb.RecordSet) (map[int64]*pb.RecordSet, error) {
	ids := make([]string, 0, len(nodes))
	byID := make(map[string]int64, len(nodes))
	for _, n := range nodes {
		id, err := d.push(ctx, []*pb.TaskIns{newTaskIns(d.runID, n, group, taskType, rs, d.o.Now())})
		if status.Code(err) == codes.NotFound {
			// The node left between GetNodes and now.
			d.o.Logger.Warn("node dropped from the round", "node_id", n, "task_type", taskType, "group_id", group, "error", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, id[0])
		byID[id[0]] = n
	}
	got, err := d.collect(ctx, ids)
	out := make(map[int64]*pb.RecordSet, len(got))
	for id, r := range got {
		if e := r.GetTask().GetError(); e != nil {
			d.o.Logger.Warn("node dropped from the round", "node_id", byID[id], "task_type", taskType, "group_id", group,
				"code", e.GetCode(), "reason", e.GetReason())
			continue
		}
		out[byID[id]] = r.GetTask().GetRecordset()
	}
	if errors.Is(err, errTimeout) {
		return nil, fmt.Errorf("round %s: %s replies %w: %d of %d nodes answered (%d with results)",
			group, taskType, err, len(got), len(nodes), len(out))
	}
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("round %s: none of the %d nodes returned a %s result (see the log for their errors)", group, len(nodes), taskType)
	}
	return out, nil
}

// RunFedAvg runs federated averaging over the SuperLink's Driver API with
// the task conventions of Flower 1.8.0: CreateRun; GetNodes until MinNodes
// are online; one get_parameters task (group "0") for the initial model;
// then for each round r (group "r") a train task per online node, the
// average of their parameters weighted by num_examples, and an evaluate
// task per node that trained. It writes one line per round and a summary to
// Out, and returns the summary.
//
// A node that answers with an error (or that the SuperLink reports
// unavailable) is dropped from the round. A phase with no result at all, or
// replies missing after RoundTimeout, ends the run with an error; fewer
// than MinNodes online nodes after NodesTimeout end it with a
// *TooFewNodesError. TLS failures and exhausted retries end it as
// RunNode's do, and so does an address that serves the Fleet API rather
// than the Driver API (ErrWrongAPI). ctx cancellation returns ctx.Err().
func RunFedAvg(ctx context.Context, o ServerOptions) (*Summary, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	d, closeConn, err := newDriver(ctx, o)
	if err != nil {
		return nil, err
	}
	defer closeConn()
	sum := &Summary{RunID: d.runID, InitialLoss: math.NaN(), FinalLoss: math.NaN()}

	nodes, err := d.nodes(ctx, o.MinNodes)
	if err != nil {
		return nil, err
	}
	var params []Array
	var lastErr error
	for _, n := range nodes {
		rs, err := getParametersIns(Config{})
		if err != nil {
			return nil, err
		}
		got, err := d.ask(ctx, []int64{n}, "0", TaskGetParameters, rs)
		if err != nil {
			lastErr = err
			o.Logger.Warn("no initial parameters from node, trying the next", "node_id", n, "error", err)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		if params, err = readGetParametersRes(got[n]); err != nil {
			lastErr = err
			o.Logger.Warn("bad initial parameters from node, trying the next", "node_id", n, "error", err)
			continue
		}
		o.Logger.Info("initial parameters received", "node_id", n, "arrays", len(params))
		break
	}
	if params == nil {
		return nil, fmt.Errorf("none of the %d nodes returned initial parameters; the last one: %w", len(nodes), lastErr)
	}

	for r := 1; r <= o.Rounds; r++ {
		rstart := time.Now()
		group := fmt.Sprint(r)
		nodes, err := d.nodes(ctx, o.MinNodes)
		if err != nil {
			return nil, err
		}
		rs, err := fitIns(params, o.FitConfig)
		if err != nil {
			return nil, err
		}
		fits, err := d.ask(ctx, nodes, group, TaskTrain, rs)
		if err != nil {
			return nil, err
		}
		var results []FitRes
		var trained []int64
		for _, n := range nodes {
			if fits[n] == nil {
				continue
			}
			fr, err := readFitRes(fits[n])
			if err == nil {
				err = fitsModel(params, fr)
			}
			if err != nil {
				// One node's bad reply costs that node the round, not
				// the run.
				o.Logger.Warn("node dropped from the round", "node_id", n, "error", err)
				continue
			}
			results = append(results, fr)
			trained = append(trained, n)
		}
		agg, trainLoss, err := fedAvg(params, results)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", r, err)
		}
		params = agg

		rs, err = evaluateIns(params, o.EvaluateConfig)
		if err != nil {
			return nil, err
		}
		evals, err := d.ask(ctx, trained, group, TaskEvaluate, rs)
		if err != nil {
			return nil, err
		}
		var lossSum, weight float64
		var count int
		for _, n := range trained {
			if evals[n] == nil {
				continue
			}
			er, err := readEvaluateRes(evals[n])
			if err != nil {
				o.Logger.Warn("evaluate result dropped", "node_id", n, "error", err)
				continue
			}
			lossSum += er.Loss * float64(er.NumExamples)
			weight += float64(er.NumExamples)
			count++
		}
		if count == 0 || weight == 0 {
			return nil, fmt.Errorf("round %d: no usable evaluate result", r)
		}
		rr := RoundResult{Round: r, TrainLoss: trainLoss, EvalLoss: lossSum / weight, Nodes: len(results), Duration: time.Since(rstart)}
		sum.Rounds = append(sum.Rounds, rr)
		fmt.Fprintf(o.Out, "round %d/%d: train_loss %.6f eval_loss %.6f nodes %d time %.2fs\n",
			r, o.Rounds, rr.TrainLoss, rr.EvalLoss, rr.Nodes, rr.Duration.Seconds())
		o.Logger.Info("round done", "round", r, "train_loss", rr.TrainLoss, "eval_loss", rr.EvalLoss, "nodes", rr.Nodes)
	}
	sum.InitialLoss = sum.Rounds[0].TrainLoss
	sum.FinalLoss = sum.Rounds[len(sum.Rounds)-1].EvalLoss
	sum.Parameters = params
	sum.Duration = time.Since(start)
	fmt.Fprintf(o.Out, "run %d finished %d rounds in %.2fs: eval_loss %.6f -> %.6f\n",
		sum.RunID, len(sum.Rounds), sum.Duration.Seconds(), sum.Rounds[0].EvalLoss, sum.FinalLoss)
	return sum, nil
}

// fitsModel checks that a train result can be averaged into global: a
// count of examples >= 0 and the model's number, dtypes and shapes of arrays.
func fitsModel(global []Array, r FitRes) error {
	if r.NumExamples < 0 {
		return fmt.Errorf("train reply reports %d examples", r.NumExamples)
	}
	if len(r.Parameters) != len(global) {
		return fmt.Errorf("train reply has %d arrays, the model %d", len(r.Parameters), len(global))
	}
	for i, a := range r.Parameters {
		if g := global[i]; a.DType != g.DType || !sameShape(a.Shape, g.Shape) {
			return fmt.Errorf("train reply array %d is %s%v, the model's %s%v", i, a.DType, a.Shape, g.DType, g.Shape)
		}
	}
	return nil
}

// fedAvg averages the results' parameters weighted by num_examples (a
// plain mean when every count is 0), and their "loss" metrics likewise.
// Results whose arrays do not match the global model's count, dtype and
// shape are an error.
func fedAvg(global []Array, results []FitRes) ([]Array, float64, error) {
	if len(results) == 0 {
		return nil, 0, errors.New("no train results to average")
	}
	var total float64
	for _, r := range results {
		if r.NumExamples < 0 {
			return nil, 0, fmt.Errorf("a node reported %d examples", r.NumExamples)
		}
		total += float64(r.NumExamples)
	}
	weight := func(r FitRes) float64 {
		if total == 0 {
			return 1 / float64(len(results))
		}
		return float64(r.NumExamples) / total
	}
	out := make([]Array, len(global))
	for i, g := range global {
		acc := make([]float64, g.Size())
		for k, r := range results {
			if len(r.Parameters) != len(global) {
				return nil, 0, fmt.Errorf("result %d has %d arrays, the model %d", k, len(r.Parameters), len(global))
			}
			a := r.Parameters[i]
			if a.DType != g.DType || !sameShape(a.Shape, g.Shape) {
				return nil, 0, fmt.Errorf("result %d: array %d is %s%v, the model's %s%v", k, i, a.DType, a.Shape, g.DType, g.Shape)
			}
			vals, err := a.Values()
			if err != nil {
				return nil, 0, err
			}
			w := weight(r)
			for j, v := range vals {
				acc[j] += w * v
			}
		}
		out[i] = g.withValues(acc)
	}
	var lossSum, lossW float64
	for _, r := range results {
		var l float64
		switch v := r.Metrics["loss"].(type) {
		case float64:
			l = v
		case int64:
			l = float64(v)
		default:
			continue
		}
		lossSum += l * float64(r.NumExamples)
		lossW += float64(r.NumExamples)
	}
	if lossW == 0 {
		return out, math.NaN(), nil
	}
	return out, lossSum / lossW, nil
}

// StopNodes asks every online node to leave, as the golden 1.8.0 shutdown
// app does: a new run, one PushTaskIns carrying a reconnect task (configs
// config {seconds: 0}, group "shutdown") per node, then PullTaskRes until
// each node answered (an unavailable-node error counts) or RoundTimeout
// passes (an error naming how many did not answer). No online node: nil.
func StopNodes(ctx context.Context, o ServerOptions) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	d, closeConn, err := newDriver(ctx, o)
	if err != nil {
		return err
	}
	defer closeConn()
	nodes, err := d.nodes(ctx, 0)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		return nil
	}
	list := make([]*pb.TaskIns, len(nodes))
	for i, n := range nodes {
		list[i] = newTaskIns(d.runID, n, "shutdown", TaskReconnect, reconnectIns(0), o.Now())
	}
	ids, err := d.push(ctx, list)
	if err != nil {
		return err
	}
	got, err := d.collect(ctx, ids)
	if errors.Is(err, errTimeout) {
		return fmt.Errorf("%d of %d nodes did not answer the reconnect task: %w", len(nodes)-len(got), len(nodes), err)
	}
	if err != nil {
		return err
	}
	o.Logger.Info("nodes stopped", "nodes", len(nodes))
	return nil
}
