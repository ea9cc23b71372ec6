// htpasswd writes one bcrypt htpasswd line for the local registry's basic auth (hack/cluster/cluster.sh).
//
// It uses golang.org/x/crypto/bcrypt, the implementation distribution's htpasswd checker verifies
// with, and checks the hash it made before printing it. The password comes on stdin (never argv,
// where other processes could read it); surrounding whitespace is trimmed.
//
// Usage: htpasswd USER < password-file > htpasswd
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "htpasswd:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	if len(args) != 1 || args[0] == "" || strings.ContainsAny(args[0], ":\n") {
		return fmt.Errorf("usage: htpasswd USER < password (USER without ':' or newline)")
	}
	raw, err := io.ReadAll(io.LimitReader(in, 73))
	if err != nil {
		return err
	}
	pw := []byte(strings.TrimSpace(string(raw)))
	if len(pw) == 0 {
		return fmt.Errorf("empty password on stdin")
	}
	if len(pw) > 72 { // bcrypt reads 72 bytes; refuse rather than silently ignore the rest
		return fmt.Errorf("password longer than 72 bytes")
	}
	h, err := bcrypt.GenerateFromPassword(pw, bcrypt.DefaultCost)
	if err != nil {
		return err
	}
	if err := bcrypt.CompareHashAndPassword(h, pw); err != nil {
		return fmt.Errorf("the hash made does not verify: %w", err)
	}
	_, err = fmt.Fprintf(out, "%s:%s\n", args[0], h)
	return err
}
