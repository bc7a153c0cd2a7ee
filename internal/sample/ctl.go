package sample

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Ctl sends one control line to the server's control port at addr and
// returns the reply line without its newline. If ctx has no deadline, a
// 10 s timeout applies.
func Ctl(ctx context.Context, addr, line string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dial control %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(c, "%s\n", strings.TrimRight(line, "\r\n")); err != nil {
		return "", fmt.Errorf("send control line: %w", err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read control reply: %w", err)
	}
	return strings.TrimRight(reply, "\r\n"), nil
}

// ParseRate parses a rate in bytes per second: a plain integer ("1000000"),
// or a number with a unit and an optional "/s": B, KB, MB, GB (powers of
// 1000), KiB, MiB, GiB (powers of 1024), or bit, Kbit, Mbit, Gbit. Units are
// case-insensitive. 0 means unlimited.
func ParseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "/s")
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid rate %q", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
		"bit": 1.0 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
	}
	m, ok := mult[unit]
	if !ok {
		return 0, fmt.Errorf("invalid rate %q: unknown unit %q", s, unit)
	}
	return int64(v * m), nil
}
