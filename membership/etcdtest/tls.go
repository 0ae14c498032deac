package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSFiles are a test CA and the certificates it signed: the servers'
// (for 127.0.0.1) and a client's, which the servers require.
type TLSFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

func writeTLS(dir string) (_ *TLSFiles, err error) {
	// The certificate steps fail only if the system's random source
	// does; the first error is returned.
	fail := func(e error) bool {
		if e != nil && err == nil {
			err = e
		}
		return e != nil
	}
	f := &TLSFiles{
		CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	caKey, kerr := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if fail(kerr) {
		return nil, err
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clusterpeer test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, cerr := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if fail(cerr) {
		return nil, err
	}
	fail(writePEM(f.CA, "CERTIFICATE", caDER))
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) {
		k, kerr := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if fail(kerr) {
			return
		}
		c := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, cerr := x509.CreateCertificate(rand.Reader, c, ca, &k.PublicKey, caKey)
		if fail(cerr) {
			return
		}
		fail(writePEM(certPath, "CERTIFICATE", der))
		kb, merr := x509.MarshalECPrivateKey(k)
		if fail(merr) {
			return
		}
		fail(writePEM(keyPath, "EC PRIVATE KEY", kb))
	}
	// The server certificate serves peers too (etcd checks both usages).
	leaf(2, "etcd", x509.ExtKeyUsageServerAuth, f.ServerCert, f.ServerKey)
	leaf(3, "clusterpeer", x509.ExtKeyUsageClientAuth, f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
