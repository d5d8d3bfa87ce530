package certfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// SetFile is one file of a set that WriteSet writes.
type SetFile struct {
	// Name is the file's name in the folder, such as "server.key": a plain
	// name, no path, not starting with a dot.
	Name string
	// Data is the whole content.
	Data []byte
	// Mode is the file's permission bits, such as 0o600 for a private key
	// or 0o644 for a certificate. 0 means 0o600.
	Mode fs.FileMode
}

// Names of WriteSet's own files in the folder. Every temporary file ends in
// setTempSuffix, so that RecoverSet can find the ones a killed writer left.
const (
	setJournal    = ".sepal-set-journal"
	setTempSuffix = ".sepal-new"
	setJournalV1  = "sepal-set 1"
)

// stepHook, when set, is called after each operation of WriteSet that
// changes the folder or makes a change durable (op names it). Only tests
// set it: to stop a writer at every step and check what it leaves (see
// killpoints.go, built with the sepal_killpoints tag).
var stepHook func(op string)

func step(op string) {
	if stepHook != nil {
		stepHook(op)
	}
}

// WriteSet writes files into the folder dir, replacing any files of the
// same names, so that the new set takes the place of the old one whole:
// however the process ends (SIGKILL, a crash, a power cut), the folder holds
// either the old files, or the new ones, or an interrupted write that the
// next WriteSet or RecoverSet on the folder completes. It never leaves a
// file cut short, and never a key readable by others: every file is first
// written in full to a temporary file created 0600 in dir and synced, then
// a journal naming the set is written and renamed into place (the commit
// point), then each temporary file is renamed over its file, and the
// journal is removed. Before the commit a recovery removes the temporary
// files (the old set stands); after it, a recovery completes the renames.
//
// dir is created 0700 if missing (with its parents). Before writing,
// WriteSet does what RecoverSet does, so a write interrupted earlier is
// completed first. Writers of one folder are serialized by an exclusive
// lock on it (flock, where the system has it); a second writer gets an
// error at once rather than wait. Readers need no lock, but a reader that
// opens several files of the set one after the other may see some of the
// old set and some of the new while the renames run (a FileSource does not
// serve such a mix; it loads the set at its next poll).
//
// On an error before the commit, the temporary files are removed and the
// folder is as it was; the error says so. On an error after it, the error
// says that the next run completes the write.
func WriteSet(dir string, files []SetFile) error {
	if err := checkSetNames(files); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("making the folder %s: %w", dir, err)
	}
	step("mkdir " + dir)
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := recoverSet(dir); err != nil {
		return err
	}

	var temps []string
	abort := func(err error) error {
		for _, t := range temps {
			os.Remove(t)
		}
		return fmt.Errorf("%w (nothing in %s was changed)", err, dir)
	}
	for _, f := range files {
		tmp := filepath.Join(dir, "."+f.Name+setTempSuffix)
		temps = append(temps, tmp)
		if err := writeTemp(tmp, f.Data, f.Mode); err != nil {
			return abort(fmt.Errorf("writing %s: %w", filepath.Join(dir, f.Name), err))
		}
	}
	var journal bytes.Buffer
	journal.WriteString(setJournalV1 + "\n")
	for _, f := range files {
		journal.WriteString(f.Name + "\n")
	}
	jtmp := filepath.Join(dir, setJournal+setTempSuffix)
	temps = append(temps, jtmp)
	if err := writeTemp(jtmp, journal.Bytes(), 0o600); err != nil {
		return abort(fmt.Errorf("writing the journal of %s: %w", dir, err))
	}
	if err := os.Rename(jtmp, filepath.Join(dir, setJournal)); err != nil {
		return abort(fmt.Errorf("committing the files in %s: %w", dir, err))
	}
	step("rename journal (commit)")
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("%w (the next run completes the write)", err)
	}
	if _, err := recoverSet(dir); err != nil {
		return fmt.Errorf("%w (the next run completes the write)", err)
	}
	return nil
}

// checkSetNames refuses names that are not plain file names of the folder,
// or that collide with each other or with WriteSet's own files.
func checkSetNames(files []SetFile) error {
	if len(files) == 0 {
		return errors.New("no files to write")
	}
	seen := map[string]bool{}
	for _, f := range files {
		switch {
		case f.Name == "" || f.Name != filepath.Base(f.Name) || strings.ContainsAny(f.Name, `/\`+"\n") || strings.HasPrefix(f.Name, "."):
			return fmt.Errorf("file name %q: give a plain name that does not start with a dot, such as server.key", f.Name)
		case seen[f.Name]:
			return fmt.Errorf("file name %q given twice", f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

// writeTemp writes data to a new file at path (which must not exist),
// created 0600, synced, then given mode (0 is 0600) and closed.
func writeTemp(path string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	step("create " + filepath.Base(path))
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	step("write " + filepath.Base(path))
	if err = f.Sync(); err != nil {
		return err
	}
	step("sync " + filepath.Base(path))
	if mode == 0 {
		mode = 0o600
	}
	if mode.Perm() != 0o600 {
		if err = f.Chmod(mode.Perm()); err != nil {
			return err
		}
		step("chmod " + filepath.Base(path))
	}
	if err = f.Close(); err != nil {
		return err
	}
	step("close " + filepath.Base(path))
	return nil
}

// Recovery is what RecoverSet (or the recovery at the start of WriteSet)
// did to a folder.
type Recovery struct {
	// Completed are the files of an interrupted WriteSet that had passed
	// its commit point, now all in place.
	Completed []string
	// Removed are the temporary files of an interrupted write that had not
	// reached its commit point (the files it would have replaced are as
	// they were), and stale temporary files of WriteFileAtomic.
	Removed []string
}

// Empty reports whether nothing had to be done.
func (r Recovery) Empty() bool { return len(r.Completed) == 0 && len(r.Removed) == 0 }

// String says in a sentence or two what was done, or "" when nothing was.
func (r Recovery) String() string {
	var parts []string
	if len(r.Completed) > 0 {
		parts = append(parts, fmt.Sprintf("completed an interrupted write of %s (a writer was stopped after it had written them in full)",
			strings.Join(r.Completed, ", ")))
	}
	if len(r.Removed) > 0 {
		parts = append(parts, fmt.Sprintf("removed %d temporary file(s) of an interrupted write that had not replaced anything (%s)",
			len(r.Removed), strings.Join(r.Removed, ", ")))
	}
	return strings.Join(parts, "; ")
}

// RecoverSet completes or undoes a WriteSet on dir that was interrupted,
// under the folder's lock: a write past its commit point is completed (its
// remaining temporary files renamed into place), and temporary files of a
// write that did not reach it are removed, leaving the files it would have
// replaced as they were. Temporary files that WriteFileAtomic leaves when
// killed (".NAME.tmp-DIGITS", older than a minute so as not to race a live
// writer) are removed too. A folder that does not exist, or holds nothing
// to recover, gives an empty Recovery and nil.
//
// It fails when the folder cannot be read or changed, when another process
// holds the lock, or when a journal names a file that is neither in place
// nor waiting in its temporary file (the folder was changed by hand during
// the write): the error names the file.
func RecoverSet(dir string) (Recovery, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return Recovery{}, nil
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return Recovery{}, err
	}
	defer unlock()
	return recoverSet(dir)
}

// staleAtomicTemp matches WriteFileAtomic's temporary files.
var staleAtomicTemp = regexp.MustCompile(`^\..+\.tmp-[0-9]+$`)

// recoverSet is RecoverSet with the lock held.
func recoverSet(dir string) (Recovery, error) {
	var r Recovery
	jpath := filepath.Join(dir, setJournal)
	data, err := os.ReadFile(jpath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return r, fmt.Errorf("reading %s: %w", jpath, err)
	default:
		names, err := parseJournal(data)
		if err != nil {
			return r, fmt.Errorf("%s: %w; check the files it names by hand, then remove it", jpath, err)
		}
		for _, name := range names {
			final := filepath.Join(dir, name)
			tmp := filepath.Join(dir, "."+name+setTempSuffix)
			if _, err := os.Lstat(tmp); err == nil {
				if err := os.Rename(tmp, final); err != nil {
					return r, fmt.Errorf("completing the interrupted write of %s: %w", final, err)
				}
				step("rename " + name)
				r.Completed = append(r.Completed, name)
				continue
			}
			if _, err := os.Lstat(final); err != nil {
				return r, fmt.Errorf("completing the interrupted write in %s: %s is neither in place nor in %s (was the folder changed by hand?): %w",
					dir, final, tmp, err)
			}
			r.Completed = append(r.Completed, name) // renamed before the interruption
		}
		if err := syncDir(dir); err != nil {
			return r, err
		}
		if err := os.Remove(jpath); err != nil {
			return r, fmt.Errorf("removing %s: %w", jpath, err)
		}
		step("remove journal")
		if err := syncDir(dir); err != nil {
			return r, err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return r, fmt.Errorf("reading the folder %s: %w", dir, err)
	}
	removed := false
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		stale := strings.HasPrefix(name, ".") && strings.HasSuffix(name, setTempSuffix)
		if !stale && staleAtomicTemp.MatchString(name) {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Minute {
				stale = true
			}
		}
		if !stale {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return r, fmt.Errorf("removing the temporary file %s: %w", filepath.Join(dir, name), err)
		}
		step("remove " + name)
		r.Removed = append(r.Removed, name)
		removed = true
	}
	if removed {
		if err := syncDir(dir); err != nil {
			return r, err
		}
	}
	return r, nil
}

// parseJournal reads the names a journal lists.
func parseJournal(data []byte) ([]string, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	if !sc.Scan() || sc.Text() != setJournalV1 {
		return nil, errors.New("not a journal of this version")
	}
	var names []string
	for sc.Scan() {
		n := sc.Text()
		if n == "" || n != filepath.Base(n) || strings.HasPrefix(n, ".") {
			return nil, fmt.Errorf("the journal names %q, which is not a file of the set", n)
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil, errors.New("the journal names no file")
	}
	return names, nil
}

// PendingSet reports whether the folder dir holds a committed WriteSet
// that was interrupted before all its files were in place (its files may
// not match each other until RecoverSet or the next WriteSet completes it).
func PendingSet(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, setJournal))
	return err == nil
}

// syncDir makes the renames and removals in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing the folder %s: %w", dir, err)
	}
	step("sync folder")
	return nil
}
