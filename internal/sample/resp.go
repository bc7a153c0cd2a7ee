package sample

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// respConn speaks the little of RESP (the Redis protocol) the load client
// needs: commands as arrays of bulk strings, and simple-string, error,
// integer and bulk replies.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func newRespConn(c net.Conn) *respConn {
	return &respConn{c: c, r: bufio.NewReaderSize(c, 128<<10), w: bufio.NewWriterSize(c, 128<<10)}
}

// errNil is a nil bulk reply ($-1): GET of a missing key.
var errNil = errors.New("nil reply")

// redisError is a -ERR reply.
type redisError string

func (e redisError) Error() string { return "redis: " + string(e) }

// writeCommand buffers one command; flush sends it.
func (rc *respConn) writeCommand(args ...[]byte) error {
	rc.w.WriteString("*")
	rc.w.WriteString(strconv.Itoa(len(args)))
	rc.w.WriteString("\r\n")
	for _, a := range args {
		rc.w.WriteString("$")
		rc.w.WriteString(strconv.Itoa(len(a)))
		rc.w.WriteString("\r\n")
		rc.w.Write(a)
		if _, err := rc.w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return nil
}

func (rc *respConn) flush() error { return rc.w.Flush() }

// readReply reads one reply. A bulk reply is read into buf (grown as
// needed) and returned; simple strings and integers are returned as text.
// An error reply is a redisError, a nil bulk errNil.
func (rc *respConn) readReply(buf []byte) ([]byte, error) {
	line, err := rc.readLine()
	if err != nil {
		return nil, err
	}
	if len(line) == 0 {
		return nil, fmt.Errorf("redis: empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return append(buf[:0], line[1:]...), nil
	case '-':
		return nil, redisError(line[1:])
	case '$':
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil {
			return nil, fmt.Errorf("redis: bad bulk length %q", line)
		}
		if n < 0 {
			return nil, errNil
		}
		if cap(buf) < n+2 {
			buf = make([]byte, n+2)
		}
		buf = buf[:n+2]
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			return nil, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return nil, fmt.Errorf("redis: bulk reply not terminated by CRLF")
		}
		return buf[:n], nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", truncate(line, 60))
}

// readLine reads one CRLF-terminated line without its terminator.
func (rc *respConn) readLine() ([]byte, error) {
	line, err := rc.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("redis: reply line too long")
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("redis: reply line not terminated by CRLF")
	}
	return line[:len(line)-2], nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
