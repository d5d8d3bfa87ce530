package app

import (
	"context"
	"fmt"
	"time"

	pb "github.com/sepal-fl/sepal/flwrproto"
)

// unixSeconds is a time as Flower's tasks carry it: float seconds since 1970.
func unixSeconds(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}

// reply is what handling one TaskIns gives: the TaskRes to push and, for a
// reconnect task, whether to leave and after how many seconds to come back.
type reply struct {
	res       *pb.TaskRes
	reconnect bool
	seconds   int64
}

// handleTask runs one TaskIns through app and builds the TaskRes exactly as
// a Flower 1.8.0 SuperNode does: producer {node_id}, consumer {anonymous},
// ancestry [TaskIns id], task_type, group_id and run_id copied, created_at
// now and ttl the time the TaskIns has left. A ClientApp error or an
// unknown task type gives a TaskRes error instead of a recordset.
func handleTask(ctx context.Context, app ClientApp, nodeID int64, ins *pb.TaskIns, now func() time.Time) reply {
	task := ins.GetTask()
	rs := task.GetRecordset()
	var (
		out     *pb.RecordSet
		err     error
		r       reply
		errCode int64 = ErrCodeClientAppException
	)
	switch task.GetTaskType() {
	case TaskGetParameters:
		var params []Array
		params, err = app.GetParameters(ctx, fromConfigsRecord(rs.GetConfigs()[keyGetParamsInsConfig]))
		if err == nil {
			out, err = getParametersRes(params)
		}
	case TaskTrain:
		var params []Array
		params, err = fromParametersRecord(rs.GetParameters()[keyFitInsParams])
		if err == nil {
			var res FitRes
			res, err = app.Fit(ctx, params, fromConfigsRecord(rs.GetConfigs()[keyFitInsConfig]))
			if err == nil {
				out, err = fitRes(res)
			}
		}
	case TaskEvaluate:
		var params []Array
		params, err = fromParametersRecord(rs.GetParameters()[keyEvalInsParams])
		if err == nil {
			var res EvaluateRes
			res, err = app.Evaluate(ctx, params, fromConfigsRecord(rs.GetConfigs()[keyEvalInsConfig]))
			if err == nil {
				out, err = evaluateRes(res)
			}
		}
	case TaskReconnect:
		r.reconnect = true
		if s, ok := fromConfigsRecord(rs.GetConfigs()[keyReconnectConfig])[fieldSeconds].(int64); ok && s > 0 {
			r.seconds = s
		}
		out = reconnectRes()
	default:
		errCode = ErrCodeUnknown
		err = fmt.Errorf("this node does not handle task type %q (it handles %s, %s, %s and %s)",
			task.GetTaskType(), TaskGetParameters, TaskTrain, TaskEvaluate, TaskReconnect)
	}
	t := now()
	created := unixSeconds(t)
	res := &pb.TaskRes{
		GroupId: ins.GetGroupId(),
		RunId:   ins.GetRunId(),
		Task: &pb.Task{
			Producer:  &pb.Node{NodeId: nodeID},
			Consumer:  &pb.Node{Anonymous: true},
			CreatedAt: created,
			Ttl:       task.GetTtl() - (created - task.GetCreatedAt()),
			Ancestry:  []string{ins.GetTaskId()},
			TaskType:  task.GetTaskType(),
		},
	}
	if err != nil {
		res.Task.Error = &pb.Error{Code: errCode, Reason: err.Error()}
	} else {
		res.Task.Recordset = out
	}
	if res.Task.Ttl <= 0 {
		// Clocks apart or a task past its ttl: the SuperLink refuses ttl <= 0.
		res.Task.Ttl = 1
	}
	r.res = res
	return r
}
