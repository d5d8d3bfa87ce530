package superlink

import (
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

func (c *codec) unmarshal(data mem.BufferSlice, m proto.Message) error {
	return proto.Unmarshal(data.Materialize(), m)
}
