package main

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestLineVerifies(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"tfe"}, strings.NewReader("s3cret\n"), &out); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSuffix(out.String(), "\n")
	user, hash, ok := strings.Cut(line, ":")
	if !ok || user != "tfe" || !strings.HasPrefix(hash, "$2") {
		t.Fatalf("not a bcrypt htpasswd line: %q", line)
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret")) != nil {
		t.Fatal("hash does not verify the password")
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cres")) == nil {
		t.Fatal("hash verifies another password")
	}
}

func TestRefuses(t *testing.T) {
	for _, c := range []struct {
		args []string
		in   string
	}{
		{nil, "pw"},
		{[]string{"a:b"}, "pw"},
		{[]string{"tfe"}, " \n"},
		{[]string{"tfe"}, strings.Repeat("x", 73)},
	} {
		if err := run(c.args, strings.NewReader(c.in), &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q, %d bytes) accepted", c.args, len(c.in))
		}
	}
}
