# The test sandbox: Debian's static busybox (sh, wget, nslookup, nc, httpd, sleep) and a page.
FROM scratch
COPY bin /bin
COPY www /www
ENV PATH=/bin
CMD ["sh"]
