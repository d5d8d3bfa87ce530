package app

import (
	"context"
	"fmt"
	"math/rand/v2"
)

// The demo task: y = w·x + b + noise, the same true w and b for every node.
var (
	demoTrueW = []float64{1.5, -2.0, 0.5}
	demoTrueB = 0.75
)

const (
	demoNoise     = 0.1
	demoTestSize  = 40
	demoDefaultLR = 0.005
)

// DemoClient is the built-in ClientApp behind "client:app": linear
// regression with 3 features, trained by plain SGD (one sample at a time)
// on a synthetic data set drawn from a seed derived from the node id. Every
// node shares the true weights but draws its own samples, noise and a
// feature shift (non-IID), so FedAvg lowers the loss round after round.
//
// Parameters are two float32 arrays, w of shape (3,) and b of shape (1,),
// zeros initially. Fit reads "epochs" (int, default 1) and "lr" (float,
// default 0.005) from its config and returns the metric "loss": the mean
// squared error over the local epoch(s), measured before each step.
// Evaluate returns the mean squared error on a held-out local test set (40
// samples) and the metric "mse". Deterministic for a node id and a sequence
// of calls. Not safe for concurrent use (RunNode never calls it concurrently).
type DemoClient struct {
	NodeID       int64
	trainX, test [][]float64
	trainY       []float64
	testY        []float64
	rng          *rand.Rand
}

// NewDemoClient returns the demo ClientApp of one node.
func NewDemoClient(nodeID int64) ClientApp {
	seed := uint64(nodeID)
	rng := rand.New(rand.NewPCG(seed, 0x5e9a1f10e4))
	n := 80 + int(seed%41)
	shift := make([]float64, len(demoTrueW))
	for i := range shift {
		shift[i] = rng.NormFloat64() * 0.5
	}
	draw := func(k int) ([][]float64, []float64) {
		xs, ys := make([][]float64, k), make([]float64, k)
		for i := range xs {
			x := make([]float64, len(demoTrueW))
			y := demoTrueB
			for j := range x {
				x[j] = rng.NormFloat64() + shift[j]
				y += demoTrueW[j] * x[j]
			}
			xs[i], ys[i] = x, y+rng.NormFloat64()*demoNoise
		}
		return xs, ys
	}
	c := &DemoClient{NodeID: nodeID, rng: rng}
	c.trainX, c.trainY = draw(n)
	c.test, c.testY = draw(demoTestSize)
	return c
}

// GetParameters returns zeros: w of shape (3,) and b of shape (1,).
func (c *DemoClient) GetParameters(ctx context.Context, config Config) ([]Array, error) {
	return []Array{Float32s(make([]float32, len(demoTrueW))), Float32s([]float32{0})}, nil
}

func (c *DemoClient) params(p []Array) (w []float64, b float64, err error) {
	if len(p) != 2 {
		return nil, 0, fmt.Errorf("demo model wants 2 arrays (w, b), got %d", len(p))
	}
	w, err = p[0].Values()
	if err != nil {
		return nil, 0, err
	}
	bs, err := p[1].Values()
	if err != nil {
		return nil, 0, err
	}
	if len(w) != len(demoTrueW) || len(bs) != 1 {
		return nil, 0, fmt.Errorf("demo model wants w of shape (%d,) and b of shape (1,), got %v and %v", len(demoTrueW), p[0].Shape, p[1].Shape)
	}
	return w, bs[0], nil
}

func predict(w []float64, b float64, x []float64) float64 {
	y := b
	for j := range w {
		y += w[j] * x[j]
	}
	return y
}

// Fit runs SGD over the local training set.
func (c *DemoClient) Fit(ctx context.Context, parameters []Array, config Config) (FitRes, error) {
	w, b, err := c.params(parameters)
	if err != nil {
		return FitRes{}, err
	}
	epochs, lr := int64(1), demoDefaultLR
	if v, ok := config["epochs"].(int64); ok && v > 0 {
		epochs = v
	}
	if v, ok := config["lr"].(float64); ok && v > 0 {
		lr = v
	}
	var sum float64
	var steps int
	for e := int64(0); e < epochs; e++ {
		if err := ctx.Err(); err != nil {
			return FitRes{}, err
		}
		for _, i := range c.rng.Perm(len(c.trainX)) {
			x := c.trainX[i]
			diff := predict(w, b, x) - c.trainY[i]
			sum += diff * diff
			steps++
			for j := range w {
				w[j] -= lr * 2 * diff * x[j]
			}
			b -= lr * 2 * diff
		}
	}
	return FitRes{
		Parameters:  []Array{parameters[0].withValues(w), parameters[1].withValues([]float64{b})},
		NumExamples: int64(len(c.trainX)),
		Metrics:     Config{"loss": sum / float64(steps)},
	}, nil
}

// Evaluate returns the mean squared error on the local test set.
func (c *DemoClient) Evaluate(ctx context.Context, parameters []Array, config Config) (EvaluateRes, error) {
	w, b, err := c.params(parameters)
	if err != nil {
		return EvaluateRes{}, err
	}
	var sum float64
	for i, x := range c.test {
		d := predict(w, b, x) - c.testY[i]
		sum += d * d
	}
	mse := sum / float64(len(c.test))
	return EvaluateRes{Loss: mse, NumExamples: int64(len(c.test)), Metrics: Config{"mse": mse}}, nil
}
