// Package sealing encrypts payload and result bytes before they reach
// JetStream (encryption at rest) with AES-256-GCM, under a keyring of named
// keys: the first key (the active one) seals new writes, every key of the
// ring opens, so a key is rotated by putting a new one first and keeping the
// old ones until nothing sealed with them is left.
//
// Sealed bytes are self-describing:
//
//	magic "\xa7TS" | version 0x01 | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext and GCM tag (16 bytes)
//
// The header and the caller's context (the purpose and job id, e.g.
// "result:01J...") are authenticated as additional data, so sealed bytes
// cannot be moved to another job or another purpose.
package sealing

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

const (
	version   = 0x01
	nonceSize = 12
	// KeySize is the size of every key: AES-256.
	KeySize = 32
	// MaxKeyIDLen bounds a key id (it is stored in one byte, and kept short).
	MaxKeyIDLen = 64
)

var magic = []byte{0xa7, 'T', 'S'}

// EnvKeys is the environment variable that may hold the keyring text.
const EnvKeys = "TANDEM_ENCRYPTION_KEYS"

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Keyring holds the keys. The zero value (nil) seals nothing: Seal returns
// its input, Open returns unsealed input as it is and refuses sealed input.
type Keyring struct {
	active string
	keys   map[string]cipher.AEAD
	order  []string
}

// Parse reads keyring text: one key per line, "<key-id>:<base64 of 32
// bytes>", the first line the active key. Blank lines and lines starting
// with # are skipped. source names where the text came from, for errors;
// errors never contain key material.
func Parse(source, text string) (*Keyring, error) {
	k := &Keyring{keys: map[string]cipher.AEAD{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, b64, ok := strings.Cut(line, ":")
		id = strings.TrimSpace(id)
		if !ok {
			return nil, fmt.Errorf("%s line %d: not \"<key-id>:<base64 key>\"", source, n)
		}
		if !keyIDRE.MatchString(id) {
			return nil, fmt.Errorf("%s line %d: key id must be 1 to %d of A-Z a-z 0-9 _ . -", source, n, MaxKeyIDLen)
		}
		if _, dup := k.keys[id]; dup {
			return nil, fmt.Errorf("%s line %d: key id %q listed twice", source, n, id)
		}
		raw, err := decodeKey(strings.TrimSpace(b64))
		if err != nil || len(raw) != KeySize {
			return nil, fmt.Errorf("%s line %d (key id %q): the key must be the base64 of exactly %d bytes", source, n, id, KeySize)
		}
		block, err := aes.NewCipher(raw)
		clear(raw)
		if err != nil {
			return nil, fmt.Errorf("%s line %d (key id %q): %v", source, n, id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("%s line %d (key id %q): %v", source, n, id, err)
		}
		if k.active == "" {
			k.active = id
		}
		k.keys[id] = aead
		k.order = append(k.order, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if k.active == "" {
		return nil, fmt.Errorf("%s: no key (one per line, \"<key-id>:<base64 of %d bytes>\", the first is active)", source, KeySize)
	}
	return k, nil
}

func decodeKey(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// Load builds the keyring from a file (--encryption-key-file) or from the
// text of TANDEM_ENCRYPTION_KEYS; both empty: nil (encryption off).
func Load(file, envText string) (*Keyring, error) {
	switch {
	case file != "" && envText != "":
		return nil, fmt.Errorf("--encryption-key-file and %s are both set: give the keys one way", EnvKeys)
	case file != "":
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--encryption-key-file: %w", err)
		}
		return Parse("--encryption-key-file "+file, string(data))
	case envText != "":
		return Parse(EnvKeys, envText)
	}
	return nil, nil
}

// Active is the id of the key that seals (empty when k is nil).
func (k *Keyring) Active() string {
	if k == nil {
		return ""
	}
	return k.active
}

// IDs are the key ids in keyring order.
func (k *Keyring) IDs() []string {
	if k == nil {
		return nil
	}
	return append([]string(nil), k.order...)
}

// String never shows key material.
func (k *Keyring) String() string {
	if k == nil {
		return "encryption off"
	}
	return fmt.Sprintf("keyring (active %s, %d keys)", k.active, len(k.keys))
}

// IsSealed reports whether b starts like sealed bytes.
func IsSealed(b []byte) bool {
	return len(b) > len(magic) && bytes.Equal(b[:len(magic)], magic)
}

// Seal encrypts plain under the active key, bound to context (e.g.
// "payload:<job id>"). With no keyring, or for empty input, it returns plain.
func (k *Keyring) Seal(context string, plain []byte) ([]byte, error) {
	if k == nil || len(plain) == 0 {
		return plain, nil
	}
	aead := k.keys[k.active]
	hl := len(magic) + 2 + len(k.active)
	out := make([]byte, hl+nonceSize, hl+nonceSize+len(plain)+aead.Overhead())
	copy(out, magic)
	out[len(magic)] = version
	out[len(magic)+1] = byte(len(k.active))
	copy(out[len(magic)+2:], k.active)
	nonce := out[hl : hl+nonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(out, nonce, plain, ad(out[:hl], context)), nil
}

func ad(header []byte, context string) []byte {
	return append(append(append([]byte(nil), header...), 0), context...)
}

// ErrUnknownKey is wrapped by Open's error when the key id of sealed bytes
// is not in the keyring.
var ErrUnknownKey = errors.New("encryption key not in the keyring")

// KeyID returns the key id of sealed bytes.
func KeyID(sealed []byte) (string, error) {
	if !IsSealed(sealed) {
		return "", errors.New("not sealed")
	}
	if len(sealed) < len(magic)+2 {
		return "", errors.New("sealed bytes: truncated header")
	}
	if v := sealed[len(magic)]; v != version {
		return "", fmt.Errorf("sealed bytes: unknown format version %d (this build reads %d)", v, version)
	}
	n := int(sealed[len(magic)+1])
	if n == 0 || len(sealed) < len(magic)+2+n {
		return "", errors.New("sealed bytes: truncated header")
	}
	return string(sealed[len(magic)+2 : len(magic)+2+n]), nil
}

// Open decrypts sealed bytes bound to context. Bytes that are not sealed
// (written while encryption was off) are returned as they are. Sealed bytes
// need their key: with no keyring, or a key id not in it, the error names
// the key id.
func (k *Keyring) Open(context string, b []byte) ([]byte, error) {
	if !IsSealed(b) {
		return b, nil
	}
	id, err := KeyID(b)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("%w: sealed with encryption key id %q, but no encryption keys are configured (--encryption-key-file or %s)", ErrUnknownKey, id, EnvKeys)
	}
	aead, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: sealed with encryption key id %q, which is not in the keyring (ids: %s)", ErrUnknownKey, id, strings.Join(k.order, ", "))
	}
	hl := len(magic) + 2 + len(id)
	if len(b) < hl+nonceSize+aead.Overhead() {
		return nil, fmt.Errorf("sealed bytes (key id %q): truncated", id)
	}
	plain, err := aead.Open(nil, b[hl:hl+nonceSize], b[hl+nonceSize:], ad(b[:hl], context))
	if err != nil {
		return nil, fmt.Errorf("sealed bytes (key id %q) do not authenticate: corrupt, or sealed for another job or purpose", id)
	}
	return plain, nil
}
