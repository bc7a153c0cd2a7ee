package sample

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// redisCheckAll GETs every key once, eight in flight, and compares each
// value with the version it should hold: the data set byte for byte.
// Each key counts as one request; each wrong or missing value as an error.
func redisCheckAll(ctx context.Context, opts RedisLoadOptions, rep *RedisReport) {
	keys := rep.Keys
	versions := opts.Versions
	if len(versions) != keys {
		versions = make([]uint32, keys)
	}
	d := net.Dialer{Timeout: opts.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		rep.ConnectionError = "check: " + err.Error()
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	rc := newRespConn(c)
	val := make([]byte, opts.ValueSize)
	var reply []byte
	const batch = 8
	for i := 0; i < keys; i += batch {
		c.SetDeadline(time.Now().Add(opts.RequestTimeout))
		j := min(keys, i+batch)
		for k := i; k < j; k++ {
			if err := rc.writeCommand([]byte("GET"), []byte(RedisKey(k))); err != nil {
				rep.ConnectionError = "check: " + err.Error()
				return
			}
		}
		if err := rc.flush(); err != nil {
			rep.ConnectionError = "check: " + err.Error()
			return
		}
		for k := i; k < j; k++ {
			reply, err = rc.readReply(reply)
			rep.Requests++
			var re redisError
			switch {
			case errors.Is(err, errNil):
				rep.fail(fmt.Sprintf("GET %s: missing", RedisKey(k)))
			case errors.As(err, &re):
				rep.fail(fmt.Sprintf("GET %s: %v", RedisKey(k), err))
			case err != nil:
				rep.ConnectionError = fmt.Sprintf("check: GET %s: %v", RedisKey(k), err)
				return
			default:
				RedisValue(val, opts.Seed, k, versions[k])
				if !bytes.Equal(reply, val) {
					rep.fail(fmt.Sprintf("GET %s: %d bytes, not version %d's %d bytes", RedisKey(k), len(reply), versions[k], len(val)))
				}
			}
		}
	}
}

func (r *RedisReport) fail(msg string) {
	r.Errors++
	if r.FirstError == "" {
		r.FirstError = msg
	}
}
