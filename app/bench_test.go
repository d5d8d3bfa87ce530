package app

import (
	"context"
	"testing"
	"time"
)

// A 1M-value float32 layer (4 MB) through the codec and the record mapping.
func bigArray() Array { return Float32s(make([]float32, 1<<20), 1024, 1024) }

func BenchmarkEncodeNPY(b *testing.B) {
	a := bigArray()
	b.SetBytes(int64(len(a.Data)))
	for b.Loop() {
		if _, err := EncodeNPY(a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeNPY(b *testing.B) {
	enc, _ := EncodeNPY(bigArray())
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, err := DecodeNPY(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// FedAvg of 10 results of one 1M-value layer.
func BenchmarkFedAvg(b *testing.B) {
	g := []Array{bigArray()}
	res := make([]FitRes, 10)
	for i := range res {
		res[i] = FitRes{Parameters: g, NumExamples: int64(i + 1)}
	}
	b.SetBytes(int64(len(g[0].Data) * len(res)))
	for b.Loop() {
		if _, _, err := fedAvg(g, res); err != nil {
			b.Fatal(err)
		}
	}
}

// One train task with a 4 MB model through the node's task handler (decode,
// Fit of an echo client, encode).
func BenchmarkHandleTrain(b *testing.B) {
	rs, _ := fitIns([]Array{bigArray()}, nil)
	ins := newTaskIns(1, 2, "1", TaskTrain, rs, fixedNow())
	ins.TaskId = "00000000-0000-4000-8000-000000000000"
	b.SetBytes(4 << 20)
	for b.Loop() {
		r := handleTask(context.Background(), echoClient{}, 2, ins, fixedNow)
		if r.res.GetTask().GetError() != nil {
			b.Fatal(r.res.GetTask().GetError())
		}
	}
}

type echoClient struct{}

func (echoClient) GetParameters(context.Context, Config) ([]Array, error) { return nil, nil }
func (echoClient) Fit(_ context.Context, p []Array, _ Config) (FitRes, error) {
	return FitRes{Parameters: p, NumExamples: 1}, nil
}
func (echoClient) Evaluate(context.Context, []Array, Config) (EvaluateRes, error) {
	return EvaluateRes{}, nil
}

func fixedNow() time.Time { return time.Unix(1_800_000_000, 0) }
