// Package app holds Sepal's Flower 1.8.0 applications: the ClientApp
// interface and the SuperNode runtime that runs one (RunNode), the FedAvg
// ServerApp over the Driver API (RunFedAvg, StopNodes), the .npy codec that
// carries arrays in Flower's records, and the built-in demo model.
//
// The record keys, task fields and array encoding are those of a Flower
// 1.8.0 SuperNode and ServerApp, so Sepal's apps work with Flower's
// SuperLink and Flower's apps with Sepal's.
package app

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// FitRes is what a ClientApp returns from Fit. Metrics travel in the
// ConfigsRecord "fitres.metrics"; RunFedAvg reports the weighted mean of a
// float "loss" metric as the round's train loss.
type FitRes struct {
	Parameters  []Array
	NumExamples int64
	Metrics     Config
}

// EvaluateRes is what a ClientApp returns from Evaluate.
type EvaluateRes struct {
	Loss        float64
	NumExamples int64
	Metrics     Config
}

// ClientApp is the Go counterpart of Flower's NumPyClient: the code a
// SuperNode runs for each task. RunNode calls one method at a time, never
// concurrently. ctx ends when the node is stopped. An error is sent back to
// the ServerApp as a TaskRes error (code 2, the error's text); the node
// keeps running.
type ClientApp interface {
	// GetParameters returns the initial model parameters.
	GetParameters(ctx context.Context, config Config) ([]Array, error)
	// Fit trains on local data starting from parameters.
	Fit(ctx context.Context, parameters []Array, config Config) (FitRes, error)
	// Evaluate measures parameters on local data.
	Evaluate(ctx context.Context, parameters []Array, config Config) (EvaluateRes, error)
}

// NewClientFunc makes the ClientApp of one node, once the SuperLink has
// given the node its id.
type NewClientFunc func(nodeID int64) ClientApp

var (
	registryMu sync.Mutex
	registry   = map[string]NewClientFunc{"client:app": NewDemoClient}
)

// Register makes ref (such as "mymodel:app") name f for Lookup and the
// flower-client-app command of a program that registers it. It panics if
// ref is empty or taken. Safe for concurrent use.
func Register(ref string, f NewClientFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if ref == "" || f == nil {
		panic("Register with an empty ref or nil func")
	}
	if _, dup := registry[ref]; dup {
		panic("Register called twice for " + ref)
	}
	registry[ref] = f
}

// Lookup returns the ClientApp maker named ref. "client:app" is the
// built-in demo (NewDemoClient). An unknown ref is an error listing the
// known ones. Safe for concurrent use.
func Lookup(ref string) (NewClientFunc, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f, ok := registry[ref]; ok {
		return f, nil
	}
	known := make([]string, 0, len(registry))
	for k := range registry {
		known = append(known, k)
	}
	slices.Sort(known)
	return nil, fmt.Errorf("unknown client app %q: Go apps are compiled in, known: %s", ref, strings.Join(known, ", "))
}
