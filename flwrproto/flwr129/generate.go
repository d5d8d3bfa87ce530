// Package flwr129 holds our own .proto description of the Flower 1.29.0
// protocol that a SuperLink serves (the Fleet, ServerAppIo and Control
// services and their messages), in the proto package sepal.flwr129, and
// the Go code generated from it.
//
// Flower names these messages flwr.proto.*, as Flower 1.8.0 names its own
// (package flwrproto); Go's protobuf registry refuses two declarations of
// one full name in a binary, so this generation lives in a package of its
// own. The wire is unchanged: protobuf carries field numbers, never
// message names, and the gRPC paths are Flower's (see ServiceDesc and
// ClientPaths in paths.go).
//
// The generated code is committed, so a build needs no protoc. To
// regenerate it, install protoc (Debian: apt-get install
// protobuf-compiler) and run `go generate ./flwrproto/flwr129`;
// protoc-gen-go and protoc-gen-go-grpc are the versions pinned as tools in
// go.mod.
package flwr129

//go:generate go build -o .bin/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
//go:generate protoc -I .. --plugin=protoc-gen-go=.bin/protoc-gen-go --plugin=protoc-gen-go-grpc=.bin/protoc-gen-go-grpc --go_out=.. --go_opt=module=github.com/sepal-fl/sepal/flwrproto --go-grpc_out=.. --go-grpc_opt=module=github.com/sepal-fl/sepal/flwrproto ../flwr129/node.proto ../flwr129/error.proto ../flwr129/transport.proto ../flwr129/recorddict.proto ../flwr129/message.proto ../flwr129/run.proto ../flwr129/fab.proto ../flwr129/heartbeat.proto ../flwr129/log.proto ../flwr129/federation_config.proto ../flwr129/federation.proto ../flwr129/fleet.proto ../flwr129/appio.proto ../flwr129/serverappio.proto ../flwr129/control.proto
