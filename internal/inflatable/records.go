package inflatable

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf16"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// Tree is a deflated object and the trees of its distinct children, in
// the order Flower's children properties give them: what a peer pushes
// for a message (get_all_nested_objects) and the ObjectTree it sends
// (get_object_tree).
type Tree struct {
	ID       string
	Content  []byte
	Children []*Tree
}

// newTree encodes an object of typ whose children are kids (repeated
// ones named once, in first order) and body.
func newTree(typ string, body []byte, kids []*Tree) *Tree {
	var ids []string
	var uniq []*Tree
	for _, k := range kids {
		if !slices.Contains(ids, k.ID) {
			ids = append(ids, k.ID)
			uniq = append(uniq, k)
		}
	}
	c := Encode(typ, ids, body)
	return &Tree{ID: ID(c), Content: c, Children: uniq}
}

// Proto returns the ObjectTree of t, as a peer sends it with its message.
func (t *Tree) Proto() *flwr129.ObjectTree {
	p := &flwr129.ObjectTree{ObjectId: t.ID}
	for _, c := range t.Children {
		p.Children = append(p.Children, c.Proto())
	}
	return p
}

// Objects returns every object of t, each once, children before their
// parents (post order, as Flower's get_all_nested_objects).
func (t *Tree) Objects() []*Tree {
	var out []*Tree
	seen := map[string]bool{}
	var walk func(*Tree)
	walk = func(n *Tree) {
		for _, c := range n.Children {
			walk(c)
		}
		if !seen[n.ID] {
			seen[n.ID] = true
			out = append(out, n)
		}
	}
	walk(t)
	return out
}

// Size is the number of bytes of every object of t, each counted once.
func (t *Tree) Size() int64 {
	var n int64
	for _, o := range t.Objects() {
		n += int64(len(o.Content))
	}
	return n
}

// ArrayChunk returns a chunk of an array's data (copied once).
func ArrayChunk(data []byte) *Tree { return newTree("ArrayChunk", data, nil) }

// Array returns an array with its data cut into chunks of at most
// MaxChunkSize bytes, as Flower's Array.deflate: the body is the JSON of
// dtype, shape, stype and the index of each chunk among the distinct
// ones (identical chunks are one child).
func Array(dtype string, shape []int, stype string, data []byte) *Tree {
	var chunks []*Tree
	for start := 0; start < len(data); start += MaxChunkSize {
		chunks = append(chunks, ArrayChunk(data[start:min(start+MaxChunkSize, len(data))]))
	}
	var uniq []string
	idx := make([]int, len(chunks))
	for i, c := range chunks {
		j := slices.Index(uniq, c.ID)
		if j < 0 {
			j = len(uniq)
			uniq = append(uniq, c.ID)
		}
		idx[i] = j
	}
	body := []byte(`{"dtype": `)
	body = appendPyString(body, dtype)
	body = append(body, `, "shape": [`...)
	for i, d := range shape {
		if i > 0 {
			body = append(body, ", "...)
		}
		body = strconv.AppendInt(body, int64(d), 10)
	}
	body = append(body, `], "stype": `...)
	body = appendPyString(body, stype)
	body = append(body, `, "arraychunk_ids": [`...)
	for i, j := range idx {
		if i > 0 {
			body = append(body, ", "...)
		}
		body = strconv.AppendInt(body, int64(j), 10)
	}
	body = append(body, "]}"...)
	return newTree("Array", body, chunks)
}

// refs is the body of an ArrayRecord or a RecordDict: the JSON object of
// each name and its child's id, in order, as Python's json.dumps writes
// it.
func refs(names []string, kids []*Tree) []byte {
	body := []byte{'{'}
	for i, n := range names {
		if i > 0 {
			body = append(body, ", "...)
		}
		body = appendPyString(body, n)
		body = append(body, ": "...)
		body = appendPyString(body, kids[i].ID)
	}
	return append(body, '}')
}

// ArrayRecord returns a record of arrays by name (names and arrays in
// the same order).
func ArrayRecord(names []string, arrays []*Tree) *Tree {
	return newTree("ArrayRecord", refs(names, arrays), arrays)
}

// RecordDict returns a RecordDict of records by name (ArrayRecord,
// ConfigRecord or MetricRecord trees; names and records in the same
// order).
func RecordDict(names []string, records []*Tree) *Tree {
	return newTree("RecordDict", refs(names, records), records)
}

// ConfigRecord returns a ConfigRecord of r's items, in their order.
func ConfigRecord(r *flwr129.ConfigRecord) (*Tree, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	return newTree("ConfigRecord", body, nil), nil
}

// MetricRecord returns a MetricRecord of r's items, in their order.
func MetricRecord(r *flwr129.MetricRecord) (*Tree, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	return newTree("MetricRecord", body, nil), nil
}

// Message returns the Message object of md (its message_id left out, as
// Flower deflates a message) whose content is the RecordDict content, or,
// with content nil, that carries e.
func Message(md *flwr129.Metadata, content *Tree, e *flwr129.Error) (*Tree, error) {
	md = proto.CloneOf(md)
	md.MessageId = ""
	m := &flwr129.Message{Metadata: md}
	if content == nil {
		m.Error = e
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var kids []*Tree
	if content != nil {
		kids = []*Tree{content}
	}
	return newTree("Message", body, kids), nil
}

// appendPyString appends s as Python's json.dumps writes a string
// (ensure_ascii: every character outside ASCII escaped as \uXXXX).
func appendPyString(b []byte, s string) []byte {
	const hexd = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r == '\b':
			b = append(b, `\b`...)
		case r == '\f':
			b = append(b, `\f`...)
		case r < 0x20 || r > 0x7e:
			units := []uint16{uint16(r)}
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				units = []uint16{uint16(r1), uint16(r2)}
			}
			for _, u := range units {
				b = append(b, '\\', 'u', hexd[u>>12], hexd[u>>8&15], hexd[u>>4&15], hexd[u&15])
			}
		default:
			b = append(b, byte(r))
		}
	}
	return append(b, '"')
}

// Refs reads the body of an ArrayRecord or a RecordDict (content of that
// type): each name and the id of its child.
func Refs(content []byte, typ string) (map[string]string, error) {
	body, err := Body(content, typ)
	if err != nil {
		return nil, err
	}
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("the body of a %s is not a JSON object of names and ids: %w", typ, err)
	}
	return m, nil
}

// ArrayMeta is an Array's body.
type ArrayMeta struct {
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	SType  string `json:"stype"`
	Chunks []int  `json:"arraychunk_ids"`
}

// ArrayData reads an Array (content) and joins the bodies of its chunks,
// which chunk returns by id (nil when it has none), into its data.
func ArrayData(content []byte, chunk func(id string) []byte) (ArrayMeta, []byte, error) {
	var m ArrayMeta
	body, err := Body(content, "Array")
	if err != nil {
		return m, nil, err
	}
	_, kids, _ := Parse(content)
	if err := json.Unmarshal(body, &m); err != nil {
		return m, nil, fmt.Errorf("the body of an Array is not its JSON metadata: %w", err)
	}
	var parts [][]byte
	n := 0
	for _, i := range m.Chunks {
		if i < 0 || i >= len(kids) {
			return m, nil, fmt.Errorf("an Array names chunk %d of %d", i, len(kids))
		}
		c := chunk(kids[i])
		if c == nil {
			return m, nil, fmt.Errorf("chunk %s of an Array is missing", kids[i])
		}
		d, err := Body(c, "ArrayChunk")
		if err != nil {
			return m, nil, fmt.Errorf("chunk %s: %w", kids[i], err)
		}
		parts = append(parts, d)
		n += len(d)
	}
	data := make([]byte, 0, n)
	for _, p := range parts {
		data = append(data, p...)
	}
	return m, data, nil
}
