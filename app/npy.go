package app

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Array is an n-dimensional array as Flower's NumPy clients exchange it:
// a dtype, a shape and the raw little-endian values in C (row-major) order.
// A 0-d array (a scalar) has an empty Shape and one value.
type Array struct {
	DType string // "float32", "float64", "int32" or "int64"
	Shape []int
	Data  []byte // little-endian, C order, len = Size() * itemsize
}

// dtypes maps our dtype names to their numpy descr and item size.
var dtypes = map[string]struct {
	descr string
	size  int
}{
	"float32": {"<f4", 4},
	"float64": {"<f8", 8},
	"int32":   {"<i4", 4},
	"int64":   {"<i8", 8},
}

var descrs = map[string]string{"<f4": "float32", "<f8": "float64", "<i4": "int32", "<i8": "int64"}

// ErrUnsupported is wrapped by every error for a valid .npy header this
// codec refuses: another dtype, big-endian data, Fortran order or pickled
// objects.
var ErrUnsupported = errors.New("unsupported array")

// Size returns the number of elements (1 for a 0-d array).
func (a Array) Size() int {
	n := 1
	for _, d := range a.Shape {
		n *= d
	}
	return n
}

// ItemSize returns the size in bytes of one element, or 0 for an unknown dtype.
func (a Array) ItemSize() int { return dtypes[a.DType].size }

func (a Array) check() error {
	dt, ok := dtypes[a.DType]
	if !ok {
		return fmt.Errorf("dtype %q: %w (supported: float32, float64, int32, int64)", a.DType, ErrUnsupported)
	}
	n, err := elements(a.Shape)
	if err != nil {
		return err
	}
	if len(a.Data) != n*dt.size {
		return fmt.Errorf("%s array of shape %v needs %d bytes of data, has %d", a.DType, a.Shape, n*dt.size, len(a.Data))
	}
	return nil
}

// elements multiplies the dimensions, refusing negative ones and overflow.
func elements(shape []int) (int, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > math.MaxInt32/d {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

const (
	npyMagic = "\x93NUMPY"
	// numpy pads the header so the data starts on a multiple of 64 bytes,
	// and leaves room for the first axis to grow to 21 digits.
	npyAlign      = 64
	npyGrowDigits = 21
)

// EncodeNPY returns a in the .npy format, byte for byte what numpy.save
// (numpy 1.24, allow_pickle=False) writes for the same array: a format 1.0
// header unless the header is too long for it, then 2.0.
func EncodeNPY(a Array) ([]byte, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	var h strings.Builder
	h.WriteString("{'descr': '")
	h.WriteString(dtypes[a.DType].descr)
	h.WriteString("', 'fortran_order': False, 'shape': ")
	shape := pyTuple(a.Shape)
	h.WriteString(shape)
	h.WriteString(", }")
	if len(a.Shape) > 0 {
		if pad := npyGrowDigits - len(strconv.Itoa(a.Shape[0])); pad > 0 {
			h.WriteString(strings.Repeat(" ", pad))
		}
	}
	header := h.String()
	var out []byte
	for _, lenSize := range []int{2, 4} {
		hlen := len(header) + 1
		pad := npyAlign - (len(npyMagic)+2+lenSize+hlen)%npyAlign
		total := hlen + pad
		if lenSize == 2 && total > math.MaxUint16 {
			continue
		}
		out = make([]byte, 0, len(npyMagic)+2+lenSize+total+len(a.Data))
		out = append(out, npyMagic...)
		if lenSize == 2 {
			out = append(out, 1, 0)
			out = binary.LittleEndian.AppendUint16(out, uint16(total))
		} else {
			out = append(out, 2, 0)
			out = binary.LittleEndian.AppendUint32(out, uint32(total))
		}
		out = append(out, header...)
		out = append(out, bytes.Repeat([]byte{' '}, pad)...)
		out = append(out, '\n')
		break
	}
	return append(out, a.Data...), nil
}

func pyTuple(shape []int) string {
	switch len(shape) {
	case 0:
		return "()"
	case 1:
		return "(" + strconv.Itoa(shape[0]) + ",)"
	}
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.Itoa(d)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// DecodeNPY reads a .npy file (format 1.0, 2.0 or 3.0 header). It refuses,
// with an error wrapping ErrUnsupported that names the reason, every dtype
// but float32, float64, int32 and int64 stored little-endian, Fortran order
// and pickled objects; it refuses malformed headers and data whose length
// does not match the shape. The returned Data is a copy.
func DecodeNPY(b []byte) (Array, error) {
	if len(b) < len(npyMagic)+4 || string(b[:len(npyMagic)]) != npyMagic {
		return Array{}, errors.New("not a .npy file: it does not start with \\x93NUMPY")
	}
	major, minor := b[6], b[7]
	var hlen, start int
	switch major {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(b[8:10])), 10
	case 2, 3:
		if len(b) < 12 {
			return Array{}, errors.New(".npy header is cut short")
		}
		h := binary.LittleEndian.Uint32(b[8:12])
		if h > uint32(len(b)) {
			return Array{}, errors.New(".npy header is cut short")
		}
		hlen, start = int(h), 12
	default:
		return Array{}, fmt.Errorf(".npy format version %d.%d: %w (this reads 1.0, 2.0 and 3.0)", major, minor, ErrUnsupported)
	}
	if start+hlen > len(b) {
		return Array{}, errors.New(".npy header is cut short")
	}
	d, err := parseHeader(string(b[start : start+hlen]))
	if err != nil {
		return Array{}, err
	}
	descr, ok := d["descr"].(string)
	if !ok {
		if _, isList := d["descr"].([]any); isList {
			return Array{}, fmt.Errorf(".npy structured dtype %s: %w (supported: <f4, <f8, <i4, <i8)", headerValue(d["descr"]), ErrUnsupported)
		}
		return Array{}, errors.New(".npy header has no 'descr' string")
	}
	fortran, ok := d["fortran_order"].(bool)
	if !ok {
		return Array{}, errors.New(".npy header has no 'fortran_order' True/False")
	}
	shapeAny, ok := d["shape"].([]any)
	if !ok {
		return Array{}, errors.New(".npy header has no 'shape' tuple")
	}
	for k := range d {
		if k != "descr" && k != "fortran_order" && k != "shape" {
			return Array{}, fmt.Errorf(".npy header has an unknown key %q", k)
		}
	}
	dtype, ok := descrs[descr]
	if !ok {
		return Array{}, fmt.Errorf(".npy dtype %q %s: %w (supported: <f4, <f8, <i4, <i8, little-endian)", descr, describeDescr(descr), ErrUnsupported)
	}
	if fortran {
		return Array{}, fmt.Errorf(".npy array in Fortran order (fortran_order: True): %w; save it in C order (numpy.ascontiguousarray)", ErrUnsupported)
	}
	shape := make([]int, len(shapeAny))
	for i, v := range shapeAny {
		n, ok := v.(int)
		if !ok {
			return Array{}, fmt.Errorf(".npy shape %s is not a tuple of integers", headerValue(d["shape"]))
		}
		shape[i] = n
	}
	a := Array{DType: dtype, Shape: shape}
	if len(shape) == 0 {
		a.Shape = nil
	}
	data := b[start+hlen:]
	n, err := elements(shape)
	if err != nil {
		return Array{}, err
	}
	if want := n * dtypes[dtype].size; len(data) != want {
		return Array{}, fmt.Errorf(".npy %s array of shape %v needs %d bytes of data, the file holds %d", dtype, shape, want, len(data))
	}
	a.Data = bytes.Clone(data)
	if a.Data == nil {
		a.Data = []byte{}
	}
	return a, nil
}

// describeDescr says in words why a numpy descr is refused.
func describeDescr(descr string) string {
	if descr == "" {
		return "(empty)"
	}
	order, kind := descr[0], strings.TrimLeft(descr, "<>|=")
	if kind == "O" || strings.HasPrefix(kind, "O") {
		return "(Python objects, stored pickled)"
	}
	if order == '>' {
		if _, ok := descrs["<"+kind]; ok {
			return "(big-endian; save it little-endian with astype('<" + kind + "'))"
		}
	}
	names := map[byte]string{'f': "float", 'i': "signed integer", 'u': "unsigned integer", 'b': "boolean", 'c': "complex", 'U': "unicode string", 'S': "byte string", 'V': "void", 'M': "datetime", 'm': "timedelta"}
	if len(kind) > 0 {
		if name, ok := names[kind[0]]; ok {
			return "(" + name + " of " + kind[1:] + " bytes)"
		}
	}
	return ""
}

// headerValue prints a parsed header value back in Python syntax.
func headerValue(v any) string {
	switch v := v.(type) {
	case string:
		return "'" + v + "'"
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = headerValue(e)
		}
		return "(" + strings.Join(parts, ", ") + ")"
	default:
		return fmt.Sprint(v)
	}
}

// parseHeader reads the Python dict literal of a .npy header: string keys;
// values are strings, True/False/None, integers and tuples or lists of them.
func parseHeader(s string) (map[string]any, error) {
	p := &pyParser{s: s}
	v, err := p.value(0)
	if err != nil {
		return nil, fmt.Errorf(".npy header %q: %w", trimHeader(s), err)
	}
	p.space()
	if p.i != len(p.s) {
		return nil, fmt.Errorf(".npy header %q: unexpected text after the dict", trimHeader(s))
	}
	d, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf(".npy header %q is not a dict", trimHeader(s))
	}
	return d, nil
}

func trimHeader(s string) string {
	s = strings.TrimRight(s, " \n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

type pyParser struct {
	s string
	i int
}

func (p *pyParser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\n' || p.s[p.i] == '\t' || p.s[p.i] == '\r') {
		p.i++
	}
}

func (p *pyParser) value(depth int) (any, error) {
	if depth > 16 {
		return nil, errors.New("nested too deeply")
	}
	p.space()
	if p.i >= len(p.s) {
		return nil, errors.New("ends early")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		d := map[string]any{}
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return d, nil
			}
			k, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			key, ok := k.(string)
			if !ok {
				return nil, errors.New("dict key is not a string")
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, errors.New("expected ':'")
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, dup := d[key]; dup {
				return nil, fmt.Errorf("key %q twice", key)
			}
			d[key] = v
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != '}' {
				return nil, errors.New("expected ',' or '}'")
			}
		}
	case c == '(' || c == '[':
		end := byte(')')
		if c == '[' {
			end = ']'
		}
		p.i++
		list := []any{}
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == end {
				p.i++
				return list, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if p.i >= len(p.s) || p.s[p.i] != end {
				return nil, fmt.Errorf("expected ',' or '%c'", end)
			}
		}
	case c == '\'' || c == '"':
		p.i++
		j := strings.IndexByte(p.s[p.i:], c)
		if j < 0 {
			return nil, errors.New("unterminated string")
		}
		v := p.s[p.i : p.i+j]
		if strings.ContainsRune(v, '\\') {
			return nil, errors.New("escapes in strings are not supported")
		}
		p.i += j + 1
		return v, nil
	case c >= '0' && c <= '9' || c == '-':
		j := p.i + 1
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(p.s[p.i:j])
		if err != nil {
			return nil, fmt.Errorf("bad integer %q", p.s[p.i:j])
		}
		p.i = j
		if p.i < len(p.s) && p.s[p.i] == 'L' { // a Python 2 long
			p.i++
		}
		return n, nil
	default:
		for _, w := range []struct {
			word string
			v    any
		}{{"True", true}, {"False", false}, {"None", nil}} {
			if strings.HasPrefix(p.s[p.i:], w.word) {
				p.i += len(w.word)
				return w.v, nil
			}
		}
		return nil, fmt.Errorf("unexpected %q", p.s[p.i:min(len(p.s), p.i+10)])
	}
}
