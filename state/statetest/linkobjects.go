package statetest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// FlowerObject returns the bytes of a Flower 1.29.0 object: "<typ>
// <child,child> <len(body)>\x00<body>", and its id, the SHA-256 of them.
func FlowerObject(typ string, children []string, body []byte) (id string, content []byte) {
	content = fmt.Appendf(nil, "%s %s %d\x00", typ, strings.Join(children, ","), len(body))
	content = append(content, body...)
	h := sha256.Sum256(content)
	return hex.EncodeToString(h[:]), content
}

// FlowerMessage is a message as a Flower peer pushes it: the Message sent
// in PushMessages (metadata with its id and an empty content, or its
// error), its object tree, and the objects to push by id.
type FlowerMessage struct {
	Message *flwr129.Message
	Tree    *flwr129.ObjectTree
	Objects map[string][]byte
}

// NewFlowerMessage builds a message with md (its message_id is set) and,
// unless errReason is given, a RecordDict holding one opaque object of
// payload (standing for an array).
func NewFlowerMessage(md *flwr129.Metadata, payload []byte) FlowerMessage {
	objs := map[string][]byte{}
	chunkID, chunk := FlowerObject("ArrayChunk", nil, payload)
	objs[chunkID] = chunk
	rdID, rd := FlowerObject("RecordDict", []string{chunkID}, []byte("records"))
	objs[rdID] = rd
	md = proto.Clone(md).(*flwr129.Metadata)
	md.MessageId = ""
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&flwr129.Message{Metadata: md})
	if err != nil {
		panic(err)
	}
	msgID, msg := FlowerObject("Message", []string{rdID}, body)
	objs[msgID] = msg
	md.MessageId = msgID
	return FlowerMessage{
		Message: &flwr129.Message{Metadata: md, Content: &flwr129.RecordDict{}},
		Tree: &flwr129.ObjectTree{ObjectId: msgID, Children: []*flwr129.ObjectTree{
			{ObjectId: rdID, Children: []*flwr129.ObjectTree{{ObjectId: chunkID}}}}},
		Objects: objs,
	}
}
