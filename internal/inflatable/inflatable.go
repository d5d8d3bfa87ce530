// Package inflatable is Flower 1.29.0's encoding of content-addressed
// objects (py/flwr/supercore/inflatable and the deflate methods of
// py/flwr/common/message.py and py/flwr/common/record): the SuperLink's
// state checks pushed objects with it, and the load harness's SuperNodes
// and ServerApp build and read messages with it, byte for byte as Flower
// does.
//
// An object's bytes are "<Type> <child_id,child_id,...> <body_len>", a
// NUL and the body; its id is the SHA-256 of those bytes in lower-case
// hex. A message is a tree of objects: Message > RecordDict >
// ArrayRecord, ConfigRecord and MetricRecord; ArrayRecord > Array >
// ArrayChunk, an Array's data cut into chunks of at most MaxChunkSize
// bytes.
package inflatable

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxChunkSize is the largest ArrayChunk Flower cuts an array into
// (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE, 5 MiB).
const MaxChunkSize = 5 << 20

// Types are the object types Flower 1.29.0 inflates
// (inflatable_class_registry).
var Types = []string{"ArrayChunk", "Array", "ArrayRecord", "ConfigRecord", "Message", "MetricRecord", "RecordDict"}

// ID is the id of an object: the SHA-256 of its bytes, lower-case hex, as
// Flower computes it (get_object_id).
func ID(content []byte) string {
	h := sha256.Sum256(content)
	return hex.EncodeToString(h[:])
}

// ValidID reports whether id has the form of an object id: 64 lower-case
// hex digits.
func ValidID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Encode returns the bytes of an object of type typ with the given
// children (their ids, in order) and body (Flower's
// add_header_to_object_body). The body is copied once, into a slice of
// exactly the object's size.
func Encode(typ string, children []string, body []byte) []byte {
	n := len(typ) + 1 + len(children)*65 + 1 + 20 + 1 + len(body)
	b := make([]byte, 0, n)
	b = append(b, typ...)
	b = append(b, ' ')
	for i, c := range children {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, c...)
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, 0)
	return append(b, body...)
}

// Parse checks content as Flower's validate_object_content does and
// returns its type and the ids of its children.
func Parse(content []byte) (typ string, children []string, err error) {
	i := bytes.IndexByte(content, 0)
	if i < 0 {
		return "", nil, fmt.Errorf("no head: the bytes hold no NUL between head and body")
	}
	head := content[:i]
	if !utf8.Valid(head) {
		return "", nil, fmt.Errorf("the head is not UTF-8")
	}
	parts := strings.Split(string(head), " ")
	if len(parts) != 3 {
		return "", nil, fmt.Errorf("the head %.80q has %d space-separated parts, not 3 (type, children, body length)", head, len(parts))
	}
	typ = parts[0]
	if !slices.Contains(Types, typ) {
		return "", nil, fmt.Errorf("objects of type %.40q are not supported", typ)
	}
	if parts[1] != "" {
		children = strings.Split(parts[1], ",")
		for _, c := range children {
			if !ValidID(c) {
				return "", nil, fmt.Errorf("child id %.80q is not a SHA-256 hex digest", c)
			}
		}
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil || n != len(content)-i-1 {
		return "", nil, fmt.Errorf("the head says the body is %.20q bytes, it is %d", parts[2], len(content)-i-1)
	}
	return typ, children, nil
}

// Body returns the body of an object of type typ (Flower's
// get_object_body), a slice of content; an error when content is not a
// well-formed object of that type.
func Body(content []byte, typ string) ([]byte, error) {
	got, _, err := Parse(content)
	if err != nil {
		return nil, err
	}
	if got != typ {
		return nil, fmt.Errorf("an object of type %s, not %s", got, typ)
	}
	return content[bytes.IndexByte(content, 0)+1:], nil
}
