package acme

import (
	"context"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger returns a zap logger whose entries go to log: certmagic and
// acmez log through zap, Sepal logs through slog, and this bridge makes one
// stream of them. Keys become snake_case, the zap logger name becomes the
// "logger" attribute, and zap's Debug, Info, Warn and Error map to the slog
// levels of the same names (DPanic and above map to Error).
func newZapLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: log})
}

// retryHook is told of each of certmagic's "will retry" entries: the
// failure and the wait before the next attempt. It returns true to drop
// the entry (the attempt ends start-up, so no retry follows). It runs on
// the goroutine that logs and must not block.
type retryHook func(err error, retryIn time.Duration) (drop bool)

// newZapLoggerHook is newZapLogger with a retryHook.
func newZapLoggerHook(log *slog.Logger, hook retryHook) *zap.Logger {
	return zap.New(&slogCore{log: log, retry: hook})
}

// slogCore is a zapcore.Core that forwards every entry to a *slog.Logger.
// It is safe for concurrent use, as slog.Logger is.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field // from With, converted only when an entry is written
	retry  retryHook       // nil: none
}

var _ zapcore.Core = (*slogCore)(nil)

func zapToSlog(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.log.Enabled(context.Background(), zapToSlog(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(c.fields[:len(c.fields):len(c.fields)], fields...), retry: c.retry}
}

// quiet are certmagic's Info messages about its own bookkeeping, logged
// at Debug so that Info shows the ACME steps (account, order, challenge,
// certificate) and not the locks around them.
var quiet = map[string]bool{
	"acquiring lock":                             true,
	"lock acquired":                              true,
	"releasing lock":                             true,
	"waiting on internal rate limiter":           true,
	"done waiting on internal rate limiter":      true,
	"started background certificate maintenance": true,
	"stopped background certificate maintenance": true,
}

// level is the slog level of an entry.
func level(e zapcore.Entry) slog.Level {
	if e.Level == zapcore.InfoLevel && quiet[e.Message] {
		return slog.LevelDebug
	}
	return zapToSlog(e.Level)
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.log.Enabled(context.Background(), level(e)) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if c.retry != nil && e.Message == "will retry" {
		var err error
		var in time.Duration
		for _, f := range fields {
			switch {
			case f.Type == zapcore.ErrorType:
				err, _ = f.Interface.(error)
			case f.Key == "retrying_in" && f.Type == zapcore.DurationType:
				in = time.Duration(f.Integer)
			}
		}
		if err != nil && c.retry(err, in) {
			return nil
		}
	}
	attrs := make([]slog.Attr, 0, len(c.fields)+len(fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	attrs = append(attrs, fieldsToAttrs(c.fields)...)
	attrs = append(attrs, fieldsToAttrs(fields)...)
	c.log.LogAttrs(context.Background(), level(e), e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

// fieldsToAttrs encodes zap fields with zap's own map encoder, so every
// field type (errors, durations, objects, arrays) comes out as zap would
// print it, and renames the keys to snake_case. The "errorVerbose" key that
// zap adds for errors with stack traces is dropped.
func fieldsToAttrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	attrs := make([]slog.Attr, 0, len(fields))
	for _, f := range fields {
		clear(enc.Fields)
		f.AddTo(enc)
		for k, v := range enc.Fields {
			if k == "errorVerbose" {
				continue
			}
			attrs = append(attrs, slog.Any(snakeCase(k), v))
		}
	}
	return attrs
}

// snakeCase turns "lockKey", "retrying_in", "Account-ID" and "remote.addr"
// into "lock_key", "retrying_in", "account_id" and "remote_addr".
func snakeCase(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 4)
	prevLower := false
	for _, r := range s {
		switch {
		case r == '-' || r == '.' || r == ' ' || r == '_':
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "_") {
				b.WriteByte('_')
			}
			prevLower = false
		case unicode.IsUpper(r):
			if prevLower {
				b.WriteByte('_')
			}
			b.WriteRune(unicode.ToLower(r))
			prevLower = false
		default:
			b.WriteRune(r)
			prevLower = unicode.IsLower(r) || unicode.IsDigit(r)
		}
	}
	return b.String()
}
