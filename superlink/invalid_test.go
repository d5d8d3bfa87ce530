package superlink

import (
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
)

// A request that is not the message its method takes gets InvalidArgument
// naming the message, not gRPC's Internal, on every method and on
// a streaming one; a client's codec reports the error as it is.
func TestGarbageRequestBody(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	garbage := []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}
	for _, method := range []string{mCreateNode, mPing, "/flwr.proto.Driver/GetNodes", "/grpc.health.v1.Health/Check"} {
		conn := f.fleetConn
		if strings.Contains(method, "Driver") {
			conn = f.driverConn
		}
		req := rawMessage(garbage)
		err := conn.Invoke(ctx, method, &req, new(rawMessage), grpc.ForceCodecV2(rawCodec{}))
		wantCode(t, method, err, codes.InvalidArgument, "the request is not a valid")
	}
	// A streaming method: health's Watch.
	st, err := f.fleetConn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/grpc.health.v1.Health/Watch", grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	req := rawMessage(garbage)
	if err := st.SendMsg(&req); err != nil {
		t.Fatal(err)
	}
	st.CloseSend()
	err = st.RecvMsg(new(rawMessage))
	wantCode(t, "Watch", err, codes.InvalidArgument, "the request is not a valid grpc.health.v1.HealthCheckRequest")
	if err := codec.New(codec.Options{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(garbage)}, &flwrproto.PingRequest{}); err == nil {
		t.Error("a client's codec took garbage")
	}
}

// rawMessage is a message's bytes, sent as they are by rawCodec.
type rawMessage []byte

type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*rawMessage))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*rawMessage) = data.Materialize()
	return nil
}
