package sqlstate

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// On PostgreSQL the chunks of an array go through pgx itself, in the
// call's transaction: written with COPY ... FROM STDIN in PostgreSQL's
// binary format, streamed from the array through pgconn's 64 KiB buffer,
// and read with each row's bytes copied straight from pgx's read buffer
// into the array. An INSERT per chunk through database/sql would copy
// each chunk twice into buffers of its own (its parameter, then its
// message), and a SELECT into a slice of its own: garbage as large as the
// array, which the process would hold until the collector runs.

// pgxConn calls f with the pgx connection under conn (database/sql's,
// from stdlib). The connection is the transaction's: what f runs is in
// the transaction.
func pgxConn(conn interface {
	Raw(func(any) error) error
}, f func(c *pgx.Conn) error) error {
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("the database connection is a %T, not pgx's", dc)
		}
		return f(c.Conn())
	})
}

// copyGroup is how many chunks one COPY statement writes. A server
// process holds what one COPY of large rows wrote until the statement
// ends (PostgreSQL 15 peaked at 566 MiB for a 512 MiB array in one COPY),
// so an array goes in statements of copyGroup chunks: 61 MiB at the most
// (BenchmarkLargeArray), each statement one round trip more.
const copyGroup = 8

// copyChunks writes the chunks of array h (dialect.writeChunks).
func copyChunks(ctx context.Context, tx *txn, h sum, data []byte) error {
	return pgxConn(tx.conn, func(c *pgx.Conn) error {
		chunks := (len(data) + chunkSize - 1) / chunkSize
		for from := 0; from < chunks; from += copyGroup {
			stream := newChunkStream(h, data, from, min(from+copyGroup, chunks))
			if _, err := c.PgConn().CopyFrom(ctx, stream, `COPY blob_chunks (hash, n, data) FROM STDIN (FORMAT binary)`); err != nil {
				return err
			}
		}
		return nil
	})
}

// readChunksPG appends the chunks of array h to out (dialect.readChunks).
func readChunksPG(ctx context.Context, tx *txn, h sum, out []byte) ([]byte, error) {
	err := pgxConn(tx.conn, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT data FROM blob_chunks WHERE hash = $1 ORDER BY n`, h[:])
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			b := rows.RawValues()[0] // bytea in binary format: the bytes
			if len(out)+len(b) > cap(out) {
				return fmt.Errorf("array %x: its chunks hold more than its %d bytes", h[:8], cap(out))
			}
			out = append(out, b...)
		}
		return rows.Err()
	})
	return out, err
}

// chunkStream is the COPY binary stream of the rows (h, n, chunk n) of
// chunks [n, end) of an array: a header, a tuple per chunk (its field
// headers, then the chunk's bytes read from the array itself), and a
// trailer.
type chunkStream struct {
	h    sum
	data []byte
	n    int          // the chunk being sent
	end  int          // the chunk after the last one to send
	head bytes.Buffer // what to send before the chunk's bytes
	body []byte       // the rest of chunk n
	done bool
}

// copySignature starts PostgreSQL's binary COPY format, followed by the
// flags and the header extension length (both 0).
var copySignature = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

func newChunkStream(h sum, data []byte, from, end int) *chunkStream {
	s := &chunkStream{h: h, data: data, n: from, end: end}
	s.head.Write(copySignature)
	s.next()
	return s
}

// next queues the tuple header of chunk s.n, or the trailer after the
// last chunk.
func (s *chunkStream) next() {
	off := s.n * chunkSize
	if s.n >= s.end || off >= len(s.data) {
		s.head.Write([]byte{0xff, 0xff}) // no more tuples
		s.done = true
		return
	}
	s.body = s.data[off:min(off+chunkSize, len(s.data))]
	var b [2 + 4 + len(sum{}) + 4 + 4 + 4]byte
	binary.BigEndian.PutUint16(b[0:], 3) // fields
	binary.BigEndian.PutUint32(b[2:], uint32(len(s.h)))
	copy(b[6:], s.h[:])
	binary.BigEndian.PutUint32(b[38:], 4)
	binary.BigEndian.PutUint32(b[42:], uint32(s.n))
	binary.BigEndian.PutUint32(b[46:], uint32(len(s.body)))
	s.head.Write(b[:])
	s.n++
}

func (s *chunkStream) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if s.head.Len() > 0 {
			k, _ := s.head.Read(p)
			p, total = p[k:], total+k
			continue
		}
		if len(s.body) > 0 {
			k := copy(p, s.body)
			s.body, p, total = s.body[k:], p[k:], total+k
			continue
		}
		if s.done {
			if total == 0 {
				return 0, io.EOF
			}
			return total, nil
		}
		s.next()
	}
	return total, nil
}
