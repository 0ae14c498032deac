package config

import (
	"fmt"
	"os"
	"strings"
)

// MaxSecretFile bounds what ReadSecretFile reads: secrets are a line long.
const MaxSecretFile = 4096

// ReadSecretFile reads a one-line secret (a private key, the hash key) and
// refuses it unless only its owner may read it, as `wg` warns: a secret
// that others can read is no longer a secret. The error says how to fix it.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %04o); run `chmod 600 %s`", path, perm, path)
	}
	buf := make([]byte, MaxSecretFile+1)
	n, _ := f.Read(buf)
	if n > MaxSecretFile {
		return "", fmt.Errorf("%s is longer than %d bytes; a secret file holds one key", path, MaxSecretFile)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}
