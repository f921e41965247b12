package conf

import (
	"bytes"

	"go.yaml.in/yaml/v3"
)

// YAML returns c in the configuration file format, every setting spelled
// out, an unset one as what unsets it in a file (admin: none, allow: []),
// but for pool and dial, which are left out when unset.
// Parsing the result gives c back, and printing that gives the same text.
func (c *Config) YAML() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(configSettings().print(c)); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
