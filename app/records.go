package app

import (
	"fmt"
	"slices"
	"strconv"

	pb "github.com/sepal-fl/sepal/flwrproto"
)

// Config is a configuration or metrics map as Flower's records carry it.
// Values are int64, float64, bool, string, []byte, []int64, []float64,
// []bool, []string or [][]byte; when sending, int and float32 are accepted
// too and sent as int64 and float64.
type Config map[string]any

// Task types of Flower 1.8.0 (Task.task_type).
const (
	TaskGetParameters = "get_parameters"
	TaskTrain         = "train"
	TaskEvaluate      = "evaluate"
	TaskReconnect     = "reconnect"
	TaskQuery         = "query"
	TaskGetProperties = "get_properties"
)

// Record keys of the Flower 1.8.0 legacy (NumPyClient) compatibility layer.
// Every record key this package reads or writes is here.
const (
	keyGetParamsInsConfig = "getparametersins.config"
	keyGetParamsResParams = "getparametersres.parameters"
	keyGetParamsResStatus = "getparametersres.status"
	keyFitInsParams       = "fitins.parameters"
	keyFitInsConfig       = "fitins.config"
	keyFitResParams       = "fitres.parameters"
	keyFitResNumExamples  = "fitres.num_examples"
	keyFitResMetrics      = "fitres.metrics"
	keyFitResStatus       = "fitres.status"
	keyEvalInsParams      = "evaluateins.parameters"
	keyEvalInsConfig      = "evaluateins.config"
	keyEvalResLoss        = "evaluateres.loss"
	keyEvalResNumExamples = "evaluateres.num_examples"
	keyEvalResMetrics     = "evaluateres.metrics"
	keyEvalResStatus      = "evaluateres.status"
	keyReconnectConfig    = "config"

	fieldNumExamples = "num_examples"
	fieldLoss        = "loss"
	fieldCode        = "code"
	fieldMessage     = "message"
	fieldSeconds     = "seconds"
	fieldReason      = "reason"

	stypeNumpy = "numpy.ndarray"
)

// Error codes of a TaskRes error, as Flower 1.8.0 numbers them.
const (
	ErrCodeUnknown            = 0
	ErrCodeLoadClientApp      = 1
	ErrCodeClientAppException = 2
	ErrCodeNodeUnavailable    = 3
)

// reasonAck is the reconnect reply's reason: the node acknowledges and leaves.
const reasonAck = 1

// toConfigsRecord converts c; an unsupported value type is an error naming the key.
func toConfigsRecord(c Config) (*pb.ConfigsRecord, error) {
	r := &pb.ConfigsRecord{Data: make(map[string]*pb.ConfigsRecordValue, len(c))}
	for k, v := range c {
		var val pb.ConfigsRecordValue
		switch v := v.(type) {
		case int64:
			val.Value = &pb.ConfigsRecordValue_Sint64{Sint64: v}
		case int:
			val.Value = &pb.ConfigsRecordValue_Sint64{Sint64: int64(v)}
		case int32:
			val.Value = &pb.ConfigsRecordValue_Sint64{Sint64: int64(v)}
		case float64:
			val.Value = &pb.ConfigsRecordValue_Double{Double: v}
		case float32:
			val.Value = &pb.ConfigsRecordValue_Double{Double: float64(v)}
		case bool:
			val.Value = &pb.ConfigsRecordValue_Bool{Bool: v}
		case string:
			val.Value = &pb.ConfigsRecordValue_String_{String_: v}
		case []byte:
			val.Value = &pb.ConfigsRecordValue_Bytes{Bytes: v}
		case []int64:
			val.Value = &pb.ConfigsRecordValue_Sint64List{Sint64List: &pb.Sint64List{Vals: v}}
		case []float64:
			val.Value = &pb.ConfigsRecordValue_DoubleList{DoubleList: &pb.DoubleList{Vals: v}}
		case []bool:
			val.Value = &pb.ConfigsRecordValue_BoolList{BoolList: &pb.BoolList{Vals: v}}
		case []string:
			val.Value = &pb.ConfigsRecordValue_StringList{StringList: &pb.StringList{Vals: v}}
		case [][]byte:
			val.Value = &pb.ConfigsRecordValue_BytesList{BytesList: &pb.BytesList{Vals: v}}
		default:
			return nil, fmt.Errorf("config key %q: values of type %T cannot be sent (use int64, float64, bool, string, []byte or a slice of them)", k, v)
		}
		r.Data[k] = &val
	}
	return r, nil
}

// fromConfigsRecord converts r; a nil record gives an empty Config.
func fromConfigsRecord(r *pb.ConfigsRecord) Config {
	c := Config{}
	for k, v := range r.GetData() {
		switch v := v.GetValue().(type) {
		case *pb.ConfigsRecordValue_Sint64:
			c[k] = v.Sint64
		case *pb.ConfigsRecordValue_Double:
			c[k] = v.Double
		case *pb.ConfigsRecordValue_Bool:
			c[k] = v.Bool
		case *pb.ConfigsRecordValue_String_:
			c[k] = v.String_
		case *pb.ConfigsRecordValue_Bytes:
			c[k] = v.Bytes
		case *pb.ConfigsRecordValue_Sint64List:
			c[k] = v.Sint64List.GetVals()
		case *pb.ConfigsRecordValue_DoubleList:
			c[k] = v.DoubleList.GetVals()
		case *pb.ConfigsRecordValue_BoolList:
			c[k] = v.BoolList.GetVals()
		case *pb.ConfigsRecordValue_StringList:
			c[k] = v.StringList.GetVals()
		case *pb.ConfigsRecordValue_BytesList:
			c[k] = v.BytesList.GetVals()
		}
	}
	return c
}

// toParametersRecord encodes arrays as Flower does: data_keys "0", "1", ...,
// stype "numpy.ndarray", data the .npy bytes; dtype and shape are filled
// (the 1.8.0 ServerApp leaves them empty, newer Flower fills them).
func toParametersRecord(arrays []Array) (*pb.ParametersRecord, error) {
	r := &pb.ParametersRecord{DataKeys: make([]string, len(arrays)), DataValues: make([]*pb.Array, len(arrays))}
	for i, a := range arrays {
		data, err := EncodeNPY(a)
		if err != nil {
			return nil, fmt.Errorf("array %d: %w", i, err)
		}
		shape := make([]int32, len(a.Shape))
		for j, d := range a.Shape {
			shape[j] = int32(d)
		}
		r.DataKeys[i] = strconv.Itoa(i)
		r.DataValues[i] = &pb.Array{Dtype: a.DType, Shape: shape, Stype: stypeNumpy, Data: data}
	}
	return r, nil
}

// fromParametersRecord decodes the arrays in data_keys order. Empty dtype
// and shape are accepted (1.8.0); filled ones must agree with the .npy header.
func fromParametersRecord(r *pb.ParametersRecord) ([]Array, error) {
	if r == nil {
		return nil, nil
	}
	if len(r.DataKeys) != len(r.DataValues) {
		return nil, fmt.Errorf("parameters record has %d keys but %d arrays", len(r.DataKeys), len(r.DataValues))
	}
	out := make([]Array, len(r.DataValues))
	for i, v := range r.DataValues {
		key := r.DataKeys[i]
		if v.GetStype() != stypeNumpy && v.GetStype() != "" {
			return nil, fmt.Errorf("array %q has stype %q; only %q is supported", key, v.GetStype(), stypeNumpy)
		}
		a, err := DecodeNPY(v.GetData())
		if err != nil {
			return nil, fmt.Errorf("array %q: %w", key, err)
		}
		if v.GetDtype() != "" && v.GetDtype() != a.DType && v.GetDtype() != dtypes[a.DType].descr {
			return nil, fmt.Errorf("array %q: record dtype %q but the .npy header says %s", key, v.GetDtype(), a.DType)
		}
		if len(v.GetShape()) > 0 {
			shape := make([]int, len(v.Shape))
			for j, d := range v.Shape {
				shape[j] = int(d)
			}
			if !sameShape(shape, a.Shape) {
				return nil, fmt.Errorf("array %q: record shape %v but the .npy header says %v", key, shape, a.Shape)
			}
		}
		out[i] = a
	}
	return out, nil
}

func sint64Value(v int64) *pb.MetricsRecordValue {
	return &pb.MetricsRecordValue{Value: &pb.MetricsRecordValue_Sint64{Sint64: v}}
}

func statusRecord() *pb.ConfigsRecord {
	return &pb.ConfigsRecord{Data: map[string]*pb.ConfigsRecordValue{
		fieldCode:    {Value: &pb.ConfigsRecordValue_Sint64{Sint64: 0}},
		fieldMessage: {Value: &pb.ConfigsRecordValue_String_{String_: "Success"}},
	}}
}

// metricInt reads an integer metric (sint64, or a whole double).
func metricInt(r *pb.MetricsRecord, key string) (int64, bool) {
	switch v := r.GetData()[key].GetValue().(type) {
	case *pb.MetricsRecordValue_Sint64:
		return v.Sint64, true
	case *pb.MetricsRecordValue_Double:
		return int64(v.Double), true
	}
	return 0, false
}

// metricFloat reads a float metric (double, or sint64).
func metricFloat(r *pb.MetricsRecord, key string) (float64, bool) {
	switch v := r.GetData()[key].GetValue().(type) {
	case *pb.MetricsRecordValue_Double:
		return v.Double, true
	case *pb.MetricsRecordValue_Sint64:
		return float64(v.Sint64), true
	}
	return 0, false
}

// Recordsets of the server side (TaskIns content).

func getParametersIns(config Config) (*pb.RecordSet, error) {
	c, err := toConfigsRecord(config)
	if err != nil {
		return nil, err
	}
	return &pb.RecordSet{Configs: map[string]*pb.ConfigsRecord{keyGetParamsInsConfig: c}}, nil
}

func fitIns(params []Array, config Config) (*pb.RecordSet, error) {
	return insWithParams(keyFitInsParams, keyFitInsConfig, params, config)
}

func evaluateIns(params []Array, config Config) (*pb.RecordSet, error) {
	return insWithParams(keyEvalInsParams, keyEvalInsConfig, params, config)
}

func insWithParams(pkey, ckey string, params []Array, config Config) (*pb.RecordSet, error) {
	p, err := toParametersRecord(params)
	if err != nil {
		return nil, err
	}
	c, err := toConfigsRecord(config)
	if err != nil {
		return nil, err
	}
	return &pb.RecordSet{
		Parameters: map[string]*pb.ParametersRecord{pkey: p},
		Configs:    map[string]*pb.ConfigsRecord{ckey: c},
	}, nil
}

func reconnectIns(seconds int64) *pb.RecordSet {
	return &pb.RecordSet{Configs: map[string]*pb.ConfigsRecord{keyReconnectConfig: {Data: map[string]*pb.ConfigsRecordValue{
		fieldSeconds: {Value: &pb.ConfigsRecordValue_Sint64{Sint64: seconds}},
	}}}}
}

// Recordsets of the client side (TaskRes content).

func getParametersRes(params []Array) (*pb.RecordSet, error) {
	p, err := toParametersRecord(params)
	if err != nil {
		return nil, err
	}
	return &pb.RecordSet{
		Parameters: map[string]*pb.ParametersRecord{keyGetParamsResParams: p},
		Configs:    map[string]*pb.ConfigsRecord{keyGetParamsResStatus: statusRecord()},
	}, nil
}

func fitRes(res FitRes) (*pb.RecordSet, error) {
	p, err := toParametersRecord(res.Parameters)
	if err != nil {
		return nil, err
	}
	m, err := toConfigsRecord(res.Metrics)
	if err != nil {
		return nil, err
	}
	return &pb.RecordSet{
		Parameters: map[string]*pb.ParametersRecord{keyFitResParams: p},
		Metrics: map[string]*pb.MetricsRecord{keyFitResNumExamples: {Data: map[string]*pb.MetricsRecordValue{
			fieldNumExamples: sint64Value(res.NumExamples),
		}}},
		Configs: map[string]*pb.ConfigsRecord{keyFitResMetrics: m, keyFitResStatus: statusRecord()},
	}, nil
}

func evaluateRes(res EvaluateRes) (*pb.RecordSet, error) {
	m, err := toConfigsRecord(res.Metrics)
	if err != nil {
		return nil, err
	}
	return &pb.RecordSet{
		Metrics: map[string]*pb.MetricsRecord{
			keyEvalResLoss: {Data: map[string]*pb.MetricsRecordValue{
				fieldLoss: {Value: &pb.MetricsRecordValue_Double{Double: res.Loss}},
			}},
			keyEvalResNumExamples: {Data: map[string]*pb.MetricsRecordValue{
				fieldNumExamples: sint64Value(res.NumExamples),
			}},
		},
		Configs: map[string]*pb.ConfigsRecord{keyEvalResMetrics: m, keyEvalResStatus: statusRecord()},
	}, nil
}

func reconnectRes() *pb.RecordSet {
	return &pb.RecordSet{Configs: map[string]*pb.ConfigsRecord{keyReconnectConfig: {Data: map[string]*pb.ConfigsRecordValue{
		fieldReason: {Value: &pb.ConfigsRecordValue_Sint64{Sint64: reasonAck}},
	}}}}
}

// Readers of TaskRes content (server side).

func readGetParametersRes(rs *pb.RecordSet) ([]Array, error) {
	if err := checkStatus(rs, keyGetParamsResStatus); err != nil {
		return nil, err
	}
	p, ok := rs.GetParameters()[keyGetParamsResParams]
	if !ok {
		return nil, fmt.Errorf("get_parameters reply has no %q record (has %v)", keyGetParamsResParams, recordKeys(rs))
	}
	return fromParametersRecord(p)
}

func readFitRes(rs *pb.RecordSet) (FitRes, error) {
	if err := checkStatus(rs, keyFitResStatus); err != nil {
		return FitRes{}, err
	}
	p, ok := rs.GetParameters()[keyFitResParams]
	if !ok {
		return FitRes{}, fmt.Errorf("train reply has no %q record (has %v)", keyFitResParams, recordKeys(rs))
	}
	arrays, err := fromParametersRecord(p)
	if err != nil {
		return FitRes{}, err
	}
	n, ok := metricInt(rs.GetMetrics()[keyFitResNumExamples], fieldNumExamples)
	if !ok {
		return FitRes{}, fmt.Errorf("train reply has no %s.%s", keyFitResNumExamples, fieldNumExamples)
	}
	return FitRes{Parameters: arrays, NumExamples: n, Metrics: fromConfigsRecord(rs.GetConfigs()[keyFitResMetrics])}, nil
}

func readEvaluateRes(rs *pb.RecordSet) (EvaluateRes, error) {
	if err := checkStatus(rs, keyEvalResStatus); err != nil {
		return EvaluateRes{}, err
	}
	loss, ok := metricFloat(rs.GetMetrics()[keyEvalResLoss], fieldLoss)
	if !ok {
		return EvaluateRes{}, fmt.Errorf("evaluate reply has no %s.%s (has %v)", keyEvalResLoss, fieldLoss, recordKeys(rs))
	}
	n, ok := metricInt(rs.GetMetrics()[keyEvalResNumExamples], fieldNumExamples)
	if !ok {
		return EvaluateRes{}, fmt.Errorf("evaluate reply has no %s.%s", keyEvalResNumExamples, fieldNumExamples)
	}
	return EvaluateRes{Loss: loss, NumExamples: n, Metrics: fromConfigsRecord(rs.GetConfigs()[keyEvalResMetrics])}, nil
}

// checkStatus refuses a reply whose status code is not 0 (OK).
func checkStatus(rs *pb.RecordSet, key string) error {
	st, ok := rs.GetConfigs()[key]
	if !ok {
		return nil
	}
	c := fromConfigsRecord(st)
	if code, _ := c[fieldCode].(int64); code != 0 {
		return fmt.Errorf("the client reported status %d: %v", code, c[fieldMessage])
	}
	return nil
}

func recordKeys(rs *pb.RecordSet) []string {
	var keys []string
	for k := range rs.GetParameters() {
		keys = append(keys, k)
	}
	for k := range rs.GetMetrics() {
		keys = append(keys, k)
	}
	for k := range rs.GetConfigs() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
