package app_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/transport"
)

// meanClient is a ClientApp: its model is one float32 array, and training
// moves it half way towards the node's local mean.
type meanClient struct{ local float32 }

func (c meanClient) GetParameters(ctx context.Context, config app.Config) ([]app.Array, error) {
	return []app.Array{app.Float32s([]float32{0})}, nil
}

func (c meanClient) Fit(ctx context.Context, params []app.Array, config app.Config) (app.FitRes, error) {
	v, err := params[0].Float32s()
	if err != nil {
		return app.FitRes{}, err
	}
	before := (v[0] - c.local) * (v[0] - c.local)
	v[0] += 0.5 * (c.local - v[0])
	return app.FitRes{Parameters: []app.Array{app.Float32s(v)}, NumExamples: 10, Metrics: app.Config{"loss": float64(before)}}, nil
}

func (c meanClient) Evaluate(ctx context.Context, params []app.Array, config app.Config) (app.EvaluateRes, error) {
	v, err := params[0].Float32s()
	if err != nil {
		return app.EvaluateRes{}, err
	}
	d := float64(v[0] - c.local)
	return app.EvaluateRes{Loss: d * d, NumExamples: 10}, nil
}

// A SuperNode running your own ClientApp: implement the three methods and
// hand a constructor to RunNode (or app.Register it under a name).
func Example_clientApp() {
	o := app.NodeOptions{
		Server:    "127.0.0.1:9092",
		TLS:       transport.ClientOptions{RootCertificates: "certificates/ca.crt"},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, nil)),
		NewClient: func(nodeID int64) app.ClientApp { return meanClient{local: float32(nodeID % 10)} },
	}
	_ = o // app.RunNode(ctx, o) blocks until the server app sends a reconnect task or ctx ends.

	// The same client, called as RunNode calls it:
	c := meanClient{local: 4}
	p, _ := c.GetParameters(context.Background(), nil)
	res, _ := c.Fit(context.Background(), p, nil)
	v, _ := res.Parameters[0].Float32s()
	fmt.Println(v, res.NumExamples, res.Metrics["loss"])
	// Output: [2] 10 16
}

func ExampleEncodeNPY() {
	b, err := app.EncodeNPY(app.Float32s([]float32{1, 2, 3, 4}, 2, 2))
	if err != nil {
		panic(err)
	}
	fmt.Printf("%q\n", b[:8])
	fmt.Println(len(b), string(b[10:69]))
	a, err := app.DecodeNPY(b)
	if err != nil {
		panic(err)
	}
	v, _ := a.Float32s()
	fmt.Println(a.DType, a.Shape, v)
	// Output:
	// "\x93NUMPY\x01\x00"
	// 144 {'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }
	// float32 [2 2] [1 2 3 4]
}

func ExampleDecodeNPY_refused() {
	header := "{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }"
	b := []byte("\x93NUMPY\x01\x00")
	b = append(b, byte(len(header)+1), 0)
	b = append(b, header+"\n"...)
	b = append(b, make([]byte, 8)...)
	_, err := app.DecodeNPY(b)
	fmt.Println(err)
	// Output: .npy dtype ">f8" (big-endian; save it little-endian with astype('<f8')): unsupported array (supported: <f4, <f8, <i4, <i8, little-endian)
}
