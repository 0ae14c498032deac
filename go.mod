module github.com/clusterpeer/clusterpeer

go 1.26.8

require github.com/google/gopacket v1.1.19
