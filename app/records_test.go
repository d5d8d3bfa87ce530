package app

import (
	"reflect"
	"strings"
	"testing"

	pb "github.com/sepal-fl/sepal/flwrproto"
)

// TestConfigRoundTrip: every value type goes out as its ConfigsRecordValue
// (int -> sint64, float -> double, str -> string, ...) and comes back.
func TestConfigRoundTrip(t *testing.T) {
	in := Config{
		"i": int64(-3), "f": 0.25, "b": true, "s": "hi", "raw": []byte{0, 1},
		"il": []int64{1, -2}, "fl": []float64{0.5}, "bl": []bool{true, false}, "sl": []string{"a", "b"}, "bsl": [][]byte{{9}},
	}
	r, err := toConfigsRecord(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Data["i"].Value.(*pb.ConfigsRecordValue_Sint64); !ok {
		t.Errorf("int64 sent as %T, want sint64", r.Data["i"].Value)
	}
	if _, ok := r.Data["f"].Value.(*pb.ConfigsRecordValue_Double); !ok {
		t.Errorf("float64 sent as %T, want double", r.Data["f"].Value)
	}
	if out := fromConfigsRecord(r); !reflect.DeepEqual(out, in) {
		t.Errorf("round trip:\n got %#v\nwant %#v", out, in)
	}
	conv, err := toConfigsRecord(Config{"n": 7, "n32": int32(8), "f32": float32(0.5)})
	if err != nil {
		t.Fatal(err)
	}
	if got := fromConfigsRecord(conv); !reflect.DeepEqual(got, Config{"n": int64(7), "n32": int64(8), "f32": 0.5}) {
		t.Errorf("int/float32 conversion: %#v", got)
	}
	if _, err := toConfigsRecord(Config{"bad": struct{}{}}); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Errorf("unsupported value: %v, want an error naming the key", err)
	}
}

func TestParametersRecordChecks(t *testing.T) {
	good, err := toParametersRecord([]Array{Float32s([]float32{1, 2}), Int32s([]int32{3})})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(good.DataKeys, []string{"0", "1"}) || good.DataValues[0].Dtype != "float32" || !reflect.DeepEqual(good.DataValues[0].Shape, []int32{2}) || good.DataValues[1].Stype != "numpy.ndarray" {
		t.Errorf("record = %v", good)
	}
	back, err := fromParametersRecord(good)
	if err != nil || len(back) != 2 || back[1].DType != "int32" {
		t.Errorf("back = %v %v", back, err)
	}
	// numpy's descr ("<f4") is accepted as the record dtype too.
	good.DataValues[0].Dtype = "<f4"
	if _, err := fromParametersRecord(good); err != nil {
		t.Errorf("dtype <f4: %v", err)
	}
	cases := []struct {
		name string
		edit func(r *pb.ParametersRecord)
		want string
	}{
		{"dtype disagrees", func(r *pb.ParametersRecord) { r.DataValues[0].Dtype = "float64" }, `record dtype "float64"`},
		{"shape disagrees", func(r *pb.ParametersRecord) { r.DataValues[0].Shape = []int32{1, 2} }, "record shape [1 2]"},
		{"stype", func(r *pb.ParametersRecord) { r.DataValues[1].Stype = "torch.tensor" }, `"torch.tensor"`},
		{"keys", func(r *pb.ParametersRecord) { r.DataKeys = r.DataKeys[:1] }, "1 keys but 2 arrays"},
		{"npy", func(r *pb.ParametersRecord) { r.DataValues[1].Data = []byte("junk") }, `array "1": not a .npy file`},
	}
	for _, c := range cases {
		r, _ := toParametersRecord([]Array{Float32s([]float32{1, 2}), Int32s([]int32{3})})
		c.edit(r)
		if _, err := fromParametersRecord(r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestReadRepliesRefuseBadStatus(t *testing.T) {
	rs, _ := fitRes(FitRes{Parameters: []Array{Float32s([]float32{1})}, NumExamples: 3})
	rs.Configs[keyFitResStatus].Data[fieldCode].Value = &pb.ConfigsRecordValue_Sint64{Sint64: 3}
	if _, err := readFitRes(rs); err == nil || !strings.Contains(err.Error(), "status 3") {
		t.Errorf("bad status: %v", err)
	}
	if _, err := readEvaluateRes(&pb.RecordSet{}); err == nil || !strings.Contains(err.Error(), "evaluateres.loss") {
		t.Errorf("empty evaluate reply: %v", err)
	}
	if _, err := readGetParametersRes(&pb.RecordSet{Metrics: map[string]*pb.MetricsRecord{"x": {}}}); err == nil || !strings.Contains(err.Error(), "[x]") {
		t.Errorf("empty get_parameters reply: %v", err)
	}
}
