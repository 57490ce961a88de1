# A Debian root made by scripts/debootstrap-base.sh from Debian's signed archive, turned into
# an image of the build's --platform (docker import cannot set a foreign platform without an
# experimental engine). ADD unpacks the tarball with owners and modes intact.
FROM scratch
ADD root.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/bash"]
