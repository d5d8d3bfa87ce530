// Package flwrproto holds our own .proto description of the Flower 1.8.0
// protocol (package flwr.proto: the Fleet and Driver services and their
// messages) and the Go code generated from it.
//
// The generated code is committed, so a build needs no protoc. To regenerate
// it, install protoc (Debian: apt-get install protobuf-compiler) and run
// `go generate ./flwrproto`; protoc-gen-go and protoc-gen-go-grpc are the
// versions pinned as tools in go.mod.
package flwrproto

//go:generate go build -o .bin/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
//go:generate protoc -I . --plugin=protoc-gen-go=.bin/protoc-gen-go --plugin=protoc-gen-go-grpc=.bin/protoc-gen-go-grpc --go_out=. --go_opt=module=github.com/sepal-fl/sepal/flwrproto --go-grpc_out=. --go-grpc_opt=module=github.com/sepal-fl/sepal/flwrproto flwr/proto/node.proto flwr/proto/error.proto flwr/proto/recordset.proto flwr/proto/task.proto flwr/proto/fleet.proto flwr/proto/driver.proto
