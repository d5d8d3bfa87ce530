// Package cli holds what every Sepal command shares: flag parsing with a
// usage that opens with examples, one-line errors with the right exit code,
// the slog logger, and a context that ends on SIGINT or SIGTERM.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// Version is the version every command prints with --version. Release
// builds set it with -ldflags "-X github.com/sepal-fl/sepal/internal/cli.Version=v1.2.3".
var Version = "v0.1.0"

// Exit codes shared by the commands.
const (
	ExitOK    = 0
	ExitError = 1 // the command ran and failed
	ExitUsage = 2 // bad flags or arguments
)

// Command describes a command for its usage text.
type Command struct {
	Name     string   // "flower-superlink"
	Synopsis string   // one line: what it does
	Usage    string   // "[flags] APP", after the name
	Examples []string // command lines, printed first

	// NoLogFormat leaves --log-format out of the flag set, for a command
	// that writes no slog lines of its own (flower-certs, sepal-load), so
	// that its --help does not offer a flag it would ignore.
	NoLogFormat bool
}

// UsageError is a mistake in the command line; Exit prints it with a pointer
// to --help and exits 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// versionFlag is the flag NewFlagSet registers in every flag set.
const versionFlag = "version"

// NewFlagSet returns a flag set named c.Name whose usage opens with the
// command's examples, which returns errors instead of exiting, and which
// has a --version flag (listed last) and, unless c.NoLogFormat, a
// --log-format flag (listed just before it; read it with LogFormat). The
// usage (--help) and the version (--version) are printed to out: give it
// stdout, as both are asked for.
func NewFlagSet(c Command, out io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SortFlags = false
	fs.Bool(versionFlag, false, "print the version and exit")
	if !c.NoLogFormat {
		lf := LogText
		fs.Var((*logFormatValue)(&lf), logFormatFlag, "how log lines are written to stderr: text (key=value) or json (one object per line, for a log collector)")
	}
	fs.Usage = func() {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %s\n\nExamples:\n", c.Name, c.Synopsis)
		for _, e := range c.Examples {
			fmt.Fprintf(&b, "  %s\n", e)
		}
		fmt.Fprintf(&b, "\nUsage:\n  %s %s\n\nFlags:\n%s", c.Name, c.Usage, flagUsages(fs))
		fmt.Fprint(out, b.String())
	}
	return fs
}

// flagUsages is fs.FlagUsages with --version moved to the end, after the
// command's own flags, and bool flags shown as plain "--insecure" rather
// than pflag 1.1's "--insecure[=true|false]". It renders copies of the
// flags; fs and its values are not changed.
func flagUsages(fs *pflag.FlagSet) string {
	show := pflag.NewFlagSet(fs.Name(), pflag.ContinueOnError)
	show.SortFlags = false
	var version, logFormat *pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		c := *f
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && f.Value.Type() == "bool" {
			// pflag adds "[=true|false]" only for values with IsBoolFlag;
			// without it, NoOptDefVal "true" prints nothing, as for bools
			// before 1.1.
			c.Value = plainBool{f.Value}
		}
		switch f.Name {
		case versionFlag:
			version = &c
			return
		case logFormatFlag:
			logFormat = &c
			return
		}
		show.AddFlag(&c)
	})
	for _, f := range []*pflag.Flag{logFormat, version} {
		if f != nil {
			show.AddFlag(f)
		}
	}
	return show.FlagUsages()
}

// plainBool shows a bool flag's value to FlagUsages without its
// IsBoolFlag method.
type plainBool struct{ pflag.Value }

// ErrHelp is returned by Parse when the user asked for --help; the usage has
// been printed and the command should exit 0.
var ErrHelp = pflag.ErrHelp

// ErrVersion is returned by Parse when the user asked for --version; the
// version has been printed and the command should exit 0 (Exit does).
var ErrVersion = errors.New("version printed")

// Parse parses args (without the program name) into a flag set from
// NewFlagSet. A flag error comes back as a *UsageError naming the flag;
// --help prints the usage and returns ErrHelp; --version prints
// "NAME VERSION" to the flag set's output and returns ErrVersion. Positional
// arguments are left for NoArgs or OneApp.
func Parse(fs *pflag.FlagSet, args []string) error {
	// pflag prints the usage on every error; we print one line instead.
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	defer func() {
		fs.Usage = usage
		fs.SetOutput(out)
	}()
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		usage()
		return ErrHelp
	}
	if err != nil {
		return &UsageError{Msg: err.Error()}
	}
	if v, _ := fs.GetBool(versionFlag); v {
		fmt.Fprintf(out, "%s %s\n", fs.Name(), Version)
		return ErrVersion
	}
	return nil
}

// NoArgs is for commands that take flags only: after Parse, it returns a
// *UsageError naming the first positional argument, or nil when there is
// none. A hint, if not empty, is added in parentheses, such as "a host
// goes after --host".
func NoArgs(fs *pflag.FlagSet, hint string) error {
	if fs.NArg() == 0 {
		return nil
	}
	msg := fmt.Sprintf("unexpected argument %q: %s takes flags only", fs.Arg(0), fs.Name())
	if hint != "" {
		msg += " (" + hint + ")"
	}
	return &UsageError{Msg: msg}
}

// OneApp is for commands that run one APP: after Parse, it returns the one
// positional argument. Without one it returns a *UsageError
// "missing APP: " + missing (missing says what to give); with more, a
// *UsageError naming the second.
func OneApp(fs *pflag.FlagSet, missing string) (string, error) {
	switch fs.NArg() {
	case 0:
		return "", &UsageError{Msg: "missing APP: " + missing}
	case 1:
		return fs.Arg(0), nil
	}
	return "", Usagef("unexpected argument %q: %s runs one APP", fs.Arg(1), fs.Name())
}

// Exit ends the command: nil, ErrHelp and ErrVersion exit 0, a *UsageError
// prints "name: msg (see name --help)" and exits 2, any other error prints
// "name: msg" and exits 1.
func Exit(name string, err error) {
	os.Exit(report(os.Stderr, name, err))
}

func report(w io.Writer, name string, err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, ErrHelp), errors.Is(err, ErrVersion):
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(w, "%s: %s (see %s --help)\n", name, ue.Msg, name)
		return ExitUsage
	default:
		fmt.Fprintf(w, "%s: %s\n", name, err)
		return ExitError
	}
}

// NewLogger returns the text slog logger every command logs with. Keys are
// snake_case; keys and key material never go through it.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return NewFormatLogger(w, level, LogText)
}

// Log formats, the values of --log-format.
const (
	LogText = "text" // slog's TextHandler: key=value
	LogJSON = "json" // slog's JSONHandler: one object per line
)

// logFormatFlag is the flag NewFlagSet registers unless Command.NoLogFormat.
const logFormatFlag = "log-format"

// logFormatValue is --log-format: text or json, refused otherwise when the
// command line is parsed.
type logFormatValue string

func (v *logFormatValue) String() string { return string(*v) }
func (v *logFormatValue) Type() string   { return "format" }
func (v *logFormatValue) Set(s string) error {
	switch s {
	case LogText, LogJSON:
		*v = logFormatValue(s)
		return nil
	}
	return fmt.Errorf("use %s or %s", LogText, LogJSON)
}

// LogFormat returns the --log-format of a flag set from NewFlagSet, after
// Parse: LogText (the default) or LogJSON; LogText for a flag set without
// the flag (Command.NoLogFormat).
func LogFormat(fs *pflag.FlagSet) string {
	if f := fs.Lookup(logFormatFlag); f != nil {
		return f.Value.String()
	}
	return LogText
}

// NewFormatLogger returns the logger of a command run with --log-format
// format (LogText, or LogJSON for one JSON object per line); any other
// format is text. The command's last line on failure ("name: message",
// printed by Exit) stays plain text.
func NewFormatLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	o := &slog.HandlerOptions{Level: level}
	if format == LogJSON {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// SignalContext returns a context that ends on SIGINT or SIGTERM. A second
// signal is left to the default handler, so it ends the process at once.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		cancel() // restores default handling for the next signal
	}()
	return ctx, cancel
}
