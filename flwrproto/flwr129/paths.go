package flwr129

import (
	"context"
	"strings"

	"google.golang.org/grpc"
)

// ProtoPackage is the proto package of the descriptions here;
// FlowerPackage is Flower's, which names the gRPC paths that Flower's
// peers call: /flwr.proto.Fleet/RegisterNode, /flwr.proto.ServerAppIo/...,
// /flwr.proto.Control/....
const (
	ProtoPackage  = "sepal.flwr129"
	FlowerPackage = "flwr.proto"
)

// FlowerPath returns Flower's gRPC path for a path of this package
// ("/sepal.flwr129.Fleet/GetRun" -> "/flwr.proto.Fleet/GetRun"); any
// other path is returned as it is.
func FlowerPath(path string) string {
	if rest, ok := strings.CutPrefix(path, "/"+ProtoPackage+"."); ok {
		return "/" + FlowerPackage + "." + rest
	}
	return path
}

// FlowerService returns a copy of d, one of the service descriptors
// generated here (Fleet_ServiceDesc, ServerAppIo_ServiceDesc,
// Control_ServiceDesc), that serves Flower's paths: its ServiceName is
// flwr.proto.<Service>, and the grpc.UnaryServerInfo that its unary
// handlers pass to interceptors names Flower's path too, so that logs and
// metrics show what the peer called. grpc.ServiceDesc is plain data: a
// caller may append the methods of another descriptor of the same service
// name (Flower 1.8.0's flwr.proto.Fleet, whose method names are disjoint
// from these) and register the sum once.
func FlowerService(d *grpc.ServiceDesc) grpc.ServiceDesc {
	out := *d
	out.ServiceName = FlowerPackage + strings.TrimPrefix(d.ServiceName, ProtoPackage)
	out.Methods = make([]grpc.MethodDesc, len(d.Methods))
	for i, m := range d.Methods {
		path := "/" + out.ServiceName + "/" + m.MethodName
		h := m.Handler
		out.Methods[i] = grpc.MethodDesc{
			MethodName: m.MethodName,
			Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				if ic == nil {
					return h(srv, ctx, dec, nil)
				}
				return h(srv, ctx, dec, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
					fixed := *info
					fixed.FullMethod = path
					return ic(ctx, req, &fixed, next)
				})
			},
		}
	}
	out.Streams = append([]grpc.StreamDesc(nil), d.Streams...) // gRPC gives stream interceptors the path called
	return out
}

// ClientOptions make the clients generated here (NewFleetClient, ...)
// call Flower's paths, as Flower's own peers do: pass them to
// grpc.NewClient.
func ClientOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(ctx, FlowerPath(method), req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(ctx, desc, cc, FlowerPath(method), opts...)
		}),
	}
}
