package app

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/golden"
)

// goldenClient is the NumPyClient of the golden 1.8.0 run, in Go:
// parameters float32 zeros (3,) and (2,2); fit moves each array half way to
// its target (1.0 and -1.0) with 10 examples and {"client_note": "hello"};
// evaluate returns the sum of the per-array MSEs, 10 and {"mse": loss}.
type goldenClient struct{}

var goldenTargets = []float32{1, -1}

func (goldenClient) GetParameters(context.Context, Config) ([]Array, error) {
	return []Array{Float32s(make([]float32, 3)), Float32s(make([]float32, 4), 2, 2)}, nil
}

func (goldenClient) Fit(_ context.Context, p []Array, _ Config) (FitRes, error) {
	out := make([]Array, len(p))
	for i, a := range p {
		v, err := a.Float32s()
		if err != nil {
			return FitRes{}, err
		}
		for j := range v {
			v[j] += 0.5 * (goldenTargets[i] - v[j])
		}
		out[i] = Float32s(v, a.Shape...)
	}
	return FitRes{Parameters: out, NumExamples: 10, Metrics: Config{"client_note": "hello"}}, nil
}

func (goldenClient) Evaluate(_ context.Context, p []Array, _ Config) (EvaluateRes, error) {
	var loss float64
	for i, a := range p {
		v, err := a.Float32s()
		if err != nil {
			return EvaluateRes{}, err
		}
		var s float64
		for _, x := range v {
			d := float64(x - goldenTargets[i])
			s += d * d
		}
		loss += s / float64(len(v))
	}
	return EvaluateRes{Loss: loss, NumExamples: 10, Metrics: Config{"mse": loss}}, nil
}

// goldenExchange is a TaskIns a 1.8.0 SuperNode pulled and the TaskRes it pushed.
type goldenExchange struct {
	pull, push int
	node       int64
	ins        *pb.TaskIns
	res        *pb.TaskRes
}

func goldenExchanges(t *testing.T) []goldenExchange {
	t.Helper()
	idx := golden.Index(t)
	var out []goldenExchange
	for i, e := range idx {
		if e.Method != "/flwr.proto.Fleet/PullTaskIns" || e.Resp == "" || e.Phase == "edge" {
			continue
		}
		resp := golden.Decode(t, e.Resp, e.RespType).(*pb.PullTaskInsResponse)
		if len(resp.GetTaskInsList()) == 0 {
			continue
		}
		req := golden.Decode(t, e.Req, e.ReqType).(*pb.PullTaskInsRequest)
		for _, f := range idx[i+1:] {
			if f.Actor == e.Actor && f.Method == "/flwr.proto.Fleet/PushTaskRes" {
				push := golden.Decode(t, f.Req, f.ReqType).(*pb.PushTaskResRequest)
				out = append(out, goldenExchange{e.Seq, f.Seq, req.GetNode().GetNodeId(), resp.GetTaskInsList()[0], push.GetTaskResList()[0]})
				break
			}
		}
	}
	return out
}

func fromUnix(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// clearArrayMeta checks that dtype and shape are filled (as newer Flower
// writes them) and clears them, as the 1.8.0 golden arrays have them empty.
func clearArrayMeta(t *testing.T, rs *pb.RecordSet) {
	t.Helper()
	for k, p := range rs.GetParameters() {
		for i, a := range p.GetDataValues() {
			if a.Dtype != "float32" || len(a.Shape) == 0 {
				t.Errorf("%s[%d]: dtype %q shape %v, want both filled", k, i, a.Dtype, a.Shape)
			}
			a.Dtype, a.Shape = "", nil
		}
	}
}

// TestGoldenClientReplies feeds every TaskIns the 1.8.0 SuperNodes pulled
// (get_parameters, train, evaluate, reconnect) to our task handler, with a
// ClientApp that computes what the golden one did, and checks our TaskRes
// against the one 1.8.0 pushed: record keys, value types, .npy bytes,
// producer, consumer, ancestry, group, run, task type and remaining ttl.
func TestGoldenClientReplies(t *testing.T) {
	ex := goldenExchanges(t)
	seen := map[string]int{}
	for _, x := range ex {
		typ := x.ins.GetTask().GetTaskType()
		seen[typ]++
		golden := x.res
		now := fromUnix(golden.GetTask().GetCreatedAt())
		r := handleTask(context.Background(), goldenClient{}, x.node, x.ins, func() time.Time { return now })
		got := r.res
		if r.reconnect != (typ == TaskReconnect) || r.seconds != 0 {
			t.Errorf("seq %d %s: reconnect=%v seconds=%d", x.pull, typ, r.reconnect, r.seconds)
		}
		if d := math.Abs(got.GetTask().GetCreatedAt() - golden.GetTask().GetCreatedAt()); d > 1e-5 {
			t.Errorf("seq %d %s: created_at off by %g", x.push, typ, d)
		}
		if d := math.Abs(got.GetTask().GetTtl() - golden.GetTask().GetTtl()); d > 1e-5 {
			t.Errorf("seq %d %s: ttl %v, golden %v", x.push, typ, got.GetTask().GetTtl(), golden.GetTask().GetTtl())
		}
		got.Task.CreatedAt, got.Task.Ttl = golden.Task.CreatedAt, golden.Task.Ttl
		clearArrayMeta(t, got.GetTask().GetRecordset())
		if !proto.Equal(got, golden) {
			t.Errorf("seq %d %s: our TaskRes differs from the golden one (seq %d)\n ours: %v\ngolden: %v", x.pull, typ, x.push, got, golden)
		}
	}
	for _, typ := range []string{TaskGetParameters, TaskTrain, TaskEvaluate, TaskReconnect} {
		if seen[typ] == 0 {
			t.Errorf("no golden %s exchange found", typ)
		}
	}
	if len(ex) != 11 {
		t.Errorf("%d golden exchanges, want 11", len(ex))
	}
}

// TestGoldenServerTasks builds our TaskIns for each golden ServerApp push
// and checks it equals the 1.8.0 one, dtype/shape aside.
func TestGoldenServerTasks(t *testing.T) {
	found := map[string]bool{}
	for _, e := range golden.Index(t) {
		if e.Method != "/flwr.proto.Driver/PushTaskIns" || e.Phase == "edge" {
			continue
		}
		req := golden.Decode(t, e.Req, e.ReqType).(*pb.PushTaskInsRequest)
		for _, want := range req.GetTaskInsList() {
			task := want.GetTask()
			rs := task.GetRecordset()
			var ours *pb.RecordSet
			var err error
			switch task.GetTaskType() {
			case TaskGetParameters:
				ours, err = getParametersIns(Config{})
			case TaskTrain, TaskEvaluate:
				key, build := keyFitInsParams, fitIns
				if task.GetTaskType() == TaskEvaluate {
					key, build = keyEvalInsParams, evaluateIns
				}
				params, perr := fromParametersRecord(rs.GetParameters()[key])
				if perr != nil {
					t.Fatalf("seq %d: %v", e.Seq, perr)
				}
				ours, err = build(params, nil)
			case TaskReconnect:
				ours = reconnectIns(0)
			default:
				t.Fatalf("seq %d: unexpected task type %q", e.Seq, task.GetTaskType())
			}
			if err != nil {
				t.Fatal(err)
			}
			got := newTaskIns(want.GetRunId(), task.GetConsumer().GetNodeId(), want.GetGroupId(), task.GetTaskType(), ours, fromUnix(task.GetCreatedAt()))
			if d := math.Abs(got.Task.CreatedAt - task.GetCreatedAt()); d > 1e-5 {
				t.Errorf("seq %d: created_at off by %g", e.Seq, d)
			}
			got.Task.CreatedAt = task.CreatedAt
			clearArrayMeta(t, got.GetTask().GetRecordset())
			if !proto.Equal(got, want) {
				t.Errorf("seq %d %s: our TaskIns differs\n ours: %v\ngolden: %v", e.Seq, task.GetTaskType(), got, want)
			}
			found[task.GetTaskType()] = true
		}
	}
	if len(found) != 4 {
		t.Errorf("task types compared: %v, want get_parameters, train, evaluate, reconnect", found)
	}
}

// TestGoldenServerReads reads the golden replies as RunFedAvg does.
func TestGoldenServerReads(t *testing.T) {
	for _, x := range goldenExchanges(t) {
		rs := x.res.GetTask().GetRecordset()
		switch x.res.GetTask().GetTaskType() {
		case TaskGetParameters:
			p, err := readGetParametersRes(rs)
			if err != nil || len(p) != 2 || !sameShape(p[1].Shape, []int{2, 2}) {
				t.Errorf("seq %d get_parameters: %v %v", x.push, p, err)
			}
		case TaskTrain:
			f, err := readFitRes(rs)
			if err != nil || f.NumExamples != 10 || f.Metrics["client_note"] != "hello" || len(f.Parameters) != 2 {
				t.Errorf("seq %d train: %+v %v", x.push, f, err)
			}
		case TaskEvaluate:
			e, err := readEvaluateRes(rs)
			if err != nil || e.NumExamples != 10 || (e.Loss != 0.5 && e.Loss != 0.125) || e.Metrics["mse"] != e.Loss {
				t.Errorf("seq %d evaluate: %+v %v", x.push, e, err)
			}
		}
	}
}

type failingClient struct{ goldenClient }

func (failingClient) Fit(context.Context, []Array, Config) (FitRes, error) {
	return FitRes{}, errors.New("out of memory")
}

func TestTaskErrors(t *testing.T) {
	ex := goldenExchanges(t)
	var train *pb.TaskIns
	for _, x := range ex {
		if x.ins.GetTask().GetTaskType() == TaskTrain {
			train = x.ins
			break
		}
	}
	now := func() time.Time { return fromUnix(train.GetTask().GetCreatedAt() + 2) }
	r := handleTask(context.Background(), failingClient{}, 7, train, now)
	if e := r.res.GetTask().GetError(); e == nil || e.Code != ErrCodeClientAppException || !strings.Contains(e.Reason, "out of memory") || r.res.GetTask().GetRecordset() != nil {
		t.Errorf("failing Fit gave %v", r.res.GetTask())
	}
	if ttl := r.res.GetTask().GetTtl(); math.Abs(ttl-3598) > 1e-3 {
		t.Errorf("ttl = %v, want 3598", ttl)
	}
	query := proto.Clone(train).(*pb.TaskIns)
	query.Task.TaskType = TaskQuery
	r = handleTask(context.Background(), goldenClient{}, 7, query, now)
	if e := r.res.GetTask().GetError(); e == nil || !strings.Contains(e.Reason, `"query"`) || r.reconnect {
		t.Errorf("query task gave %v", r.res.GetTask())
	}
	if r.res.GetTask().GetTaskType() != TaskQuery || r.res.GetTask().GetAncestry()[0] != train.GetTaskId() {
		t.Errorf("error TaskRes lost its type or ancestry: %v", r.res.GetTask())
	}
}
