package statetest

import (
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
)

// FlowerObject returns the bytes of a Flower 1.29.0 object: "<typ>
// <child,child> <len(body)>\x00<body>", and its id, the SHA-256 of them.
func FlowerObject(typ string, children []string, body []byte) (id string, content []byte) {
	content = inflatable.Encode(typ, children, body)
	return inflatable.ID(content), content
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
	return flowerMessage(md, &flwr129.ObjectTree{ObjectId: rdID, Children: []*flwr129.ObjectTree{{ObjectId: chunkID}}}, objs)
}

// flowerMessage completes a message of md whose content is the tree
// content (a RecordDict's, its objects in objs): the Message object, its
// id set in a copy of md.
func flowerMessage(md *flwr129.Metadata, content *flwr129.ObjectTree, objs map[string][]byte) FlowerMessage {
	md = proto.Clone(md).(*flwr129.Metadata)
	md.MessageId = ""
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&flwr129.Message{Metadata: md})
	if err != nil {
		panic(err)
	}
	msgID, msg := FlowerObject("Message", []string{content.ObjectId}, body)
	objs[msgID] = msg
	md.MessageId = msgID
	return FlowerMessage{
		Message: &flwr129.Message{Metadata: md, Content: &flwr129.RecordDict{}},
		Tree:    &flwr129.ObjectTree{ObjectId: msgID, Children: []*flwr129.ObjectTree{content}},
		Objects: objs,
	}
}

// NewFlowerArrayMessage builds a message as Flower 1.29.0 sends one array
// in chunks: Message > RecordDict > ArrayRecord > Array > ArrayChunk...,
// with md (its message_id set). The same chunk given twice is one object
// named twice by the Array.
func NewFlowerArrayMessage(md *flwr129.Metadata, chunks ...[]byte) FlowerMessage {
	ids := make([]string, len(chunks))
	contents := make([][]byte, len(chunks))
	for i, c := range chunks {
		ids[i], contents[i] = FlowerObject("ArrayChunk", nil, c)
	}
	return NewFlowerChunkedMessage(md, ids, contents)
}

// NewFlowerChunkedMessage is NewFlowerArrayMessage of chunks made
// already (FlowerObject "ArrayChunk"): ids and their contents, in order,
// which the message holds without a copy.
func NewFlowerChunkedMessage(md *flwr129.Metadata, ids []string, contents [][]byte) FlowerMessage {
	objs := map[string][]byte{}
	kids := make([]*flwr129.ObjectTree, len(ids))
	for i, id := range ids {
		objs[id] = contents[i]
		kids[i] = &flwr129.ObjectTree{ObjectId: id}
	}
	arrID, arr := FlowerObject("Array", ids, []byte("array"))
	objs[arrID] = arr
	recID, rec := FlowerObject("ArrayRecord", []string{arrID}, []byte("arrays"))
	objs[recID] = rec
	rdID, rd := FlowerObject("RecordDict", []string{recID}, []byte("records"))
	objs[rdID] = rd
	return flowerMessage(md, &flwr129.ObjectTree{ObjectId: rdID, Children: []*flwr129.ObjectTree{
		{ObjectId: recID, Children: []*flwr129.ObjectTree{{ObjectId: arrID, Children: kids}}}}}, objs)
}

// Chunk returns n bytes of a pattern that seed makes differ.
func Chunk(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// Hex256 is the SHA-256 of b in lower-case hex: an object's id, a FAB's
// hash.
func Hex256(b []byte) string { return inflatable.ID(b) }
